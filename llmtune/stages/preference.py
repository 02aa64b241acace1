"""What the offline preference stages (dpo, kto, orpo, cpo) share: the policy with its method, the trainer built on
the recipe's rows, the pairs data.max_length dropped, and a saved run holding only the trained adapter.

With LoRA and no model.adapter the trainer gets a fresh adapter to wrap (peft_config), so a reference, where the
loss has one, is the base with the adapter switched off; otherwise the method is applied here (model.adapter is
loaded trainable, and TRL copies it as a frozen "ref" adapter where the loss needs a reference).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import Trainer

REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of a loaded adapter


def uses_adapters(recipe: Recipe) -> bool:
    return recipe.method.kind in ("lora", "qlora")


def build_preference_trainer(
    recipe: Recipe,
    args_common: dict[str, Any],
    config_cls: type,
    trainer_cls: type,
    config_keys: dict[str, Any],
    **trainer_keys: Any,
) -> Trainer:
    """`trainer_cls` on the recipe's rows, its config from `config_keys` (and data.max_length) with the common
    training args; `trainer_keys` go to the trainer as they are (dpo's ref_model)."""
    from llmtune.data.load import load_splits
    from llmtune.modeling import (
        apply_method,
        count_parameters,
        describe_parameters,
        load_model,
        load_tokenizer,
        lora_config,
    )
    from llmtune.stages.args import build_config
    from llmtune.stages.rm import check_kept, warn_if_lora_ignored

    warn_if_lora_ignored(recipe)
    tokenizer = load_tokenizer(recipe)
    train, evals = load_splits(recipe)
    model = load_model(recipe)
    peft_config = None
    if uses_adapters(recipe) and not recipe.model.adapter:
        peft_config = lora_config(recipe.method, "CAUSAL_LM")  # TRL wraps it; the reference is the adapter-off base
    else:
        model = apply_method(model, recipe, "CAUSAL_LM")
    config = build_config(config_cls, args_common, max_length=recipe.data.max_length, **config_keys)
    trainer = without_ref_adapter(trainer_cls)(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
        **trainer_keys,
    )
    check_kept(len(train), len(trainer.train_dataset), recipe.data.max_length, "the prompt alone")
    console.info(f"{recipe.method.kind} policy: {describe_parameters(*count_parameters(trainer.model))}")
    return trainer


def without_ref_adapter(trainer_cls: type) -> type:
    """`trainer_cls` saving only the trained adapter: TRL's frozen "ref" copy is rebuilt from model.adapter."""

    class Trainer(trainer_cls):
        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            super()._save(output_dir, state_dict)
            shutil.rmtree(Path(output_dir or self.args.output_dir) / REF_ADAPTER, ignore_errors=True)

    Trainer.__name__ = Trainer.__qualname__ = f"Llmtune{trainer_cls.__name__}"
    return Trainer
