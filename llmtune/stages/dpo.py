"""Stage dpo: direct preference optimisation with TRL's DPOTrainer, against a frozen reference; dpo.loss_type picks
any loss of TRL's DPO family (ipo, hinge, robust, bco_pair, sppo_hard, nca_pair, apo_zero, apo_down, discopop, ...)
or a weighted sum of several.

The reference, lean first:
  lora/qlora, new adapter      the base with the adapter switched off (no second copy of the weights)
  lora/qlora, model.adapter    the earlier stage's adapter, frozen: TRL copies it under the name "ref" and keeps
                               training the loaded one, so DPO starts from the SFT-tuned model and is anchored to it
                               (one copy of the base, two small adapters; the output is one adapter on the base)
  full/freeze                  the starting model's log-probs, computed once before training
                               (precompute_ref_log_probs), so no second copy is held either
  dpo.reference                an explicit model directory, loaded frozen beside the policy
Merging the SFT adapter into the base and adding a fresh DPO adapter would anchor to the same model, but its output
would only load on the merged weights (and merging into a 4-bit base is lossy), so the adapter is continued instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from trl import DPOTrainer

REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of a loaded adapter


def build(recipe: Recipe, args_common: dict[str, Any]) -> DPOTrainer:
    """A DPOTrainer for the recipe: policy with the method applied, the lean reference (see the module doc)."""
    from trl import DPOConfig, DPOTrainer

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
    ref_model = load_reference(recipe) if recipe.dpo.reference else None
    model = load_model(recipe)
    adapters = recipe.method.kind in ("lora", "qlora")
    peft_config = None
    if adapters and not recipe.model.adapter:
        peft_config = lora_config(recipe.method, "CAUSAL_LM")  # TRL wraps it; the reference is the adapter-off base
    else:
        model = apply_method(model, recipe, "CAUSAL_LM")
    config = build_config(
        DPOConfig,
        args_common,
        beta=recipe.dpo.beta,
        loss_type=recipe.dpo.losses,
        loss_weights=recipe.dpo.loss_weights,
        label_smoothing=recipe.dpo.label_smoothing,
        max_length=recipe.data.max_length,
        precompute_ref_log_probs=not adapters and ref_model is None,
    )
    trainer = without_ref_adapter(DPOTrainer)(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    check_kept(len(train), len(trainer.train_dataset), recipe.data.max_length, "the prompt alone")
    console.info(f"{recipe.method.kind} policy: {describe_parameters(*count_parameters(trainer.model))}")
    return trainer


def load_reference(recipe: Recipe) -> PreTrainedModel:
    """dpo.reference: a full model directory (or Hub id), loaded frozen in the policy's dtype."""
    from llmtune.modeling import load_model, resolve_local

    name = recipe.dpo.reference
    path = resolve_local(name, "main", recipe, what="dpo.reference")
    if (path / "adapter_config.json").is_file():
        raise UserError(
            f"dpo.reference: {name} is an adapter, not a model; to use an SFT adapter as the reference, set "
            "model.adapter to it and leave dpo.reference unset (the starting model is the reference), or merge it first"
        )
    spec = recipe.model.model_copy(update={"name_or_path": str(path), "adapter": None})
    model = load_model(recipe.model_copy(update={"model": spec}))
    model.requires_grad_(False)
    return model.eval()


def without_ref_adapter(trainer_cls: type) -> type:
    """`trainer_cls` saving only the trained adapter: TRL's frozen "ref" copy is rebuilt from model.adapter."""

    class Trainer(trainer_cls):
        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            super()._save(output_dir, state_dict)
            shutil.rmtree(Path(output_dir or self.args.output_dir) / REF_ADAPTER, ignore_errors=True)

    Trainer.__name__ = Trainer.__qualname__ = f"Llmtune{trainer_cls.__name__}"
    return Trainer
