"""Stage kto: Kahneman-Tversky optimisation with TRL's KTOTrainer, on unpaired rows (prompt, completion, label).

Each completion is pushed up (label true, desirable) or down (false) relative to the reference, against a KL
baseline estimated from mismatched prompt/completion pairs in the same batch (so train.batch_size must be 2 or more).
Preference pairs are read as two rows: chosen desirable, rejected undesirable. The reference is the lean one of
`llmtune.stages.dpo`: the adapter-off base, the earlier adapter frozen as "ref", or (full/freeze) the starting
model's log-probs computed once before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from trl import KTOTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> KTOTrainer:
    """A KTOTrainer for the recipe: policy with the method applied, kto rows, KTOConfig, the lean reference."""
    from trl import KTOConfig, KTOTrainer

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
    from llmtune.stages.dpo import without_ref_adapter
    from llmtune.stages.rm import check_kept, warn_if_lora_ignored

    if recipe.train.batch_size < 2:
        raise UserError("train.batch_size must be 2 or more for kto: its KL baseline pairs rows within a batch")
    warn_if_lora_ignored(recipe)
    tokenizer = load_tokenizer(recipe)
    train, evals = load_splits(recipe)
    model = load_model(recipe)
    adapters = recipe.method.kind in ("lora", "qlora")
    peft_config = None
    if adapters and not recipe.model.adapter:
        peft_config = lora_config(recipe.method, "CAUSAL_LM")
    else:
        model = apply_method(model, recipe, "CAUSAL_LM")
    kto = recipe.kto
    config = build_config(
        KTOConfig,
        args_common,
        beta=kto.beta,
        loss_type=kto.loss_type,
        desirable_weight=kto.desirable_weight,
        undesirable_weight=kto.undesirable_weight,
        max_length=recipe.data.max_length,
        precompute_ref_log_probs=not adapters,
    )
    trainer = without_ref_adapter(KTOTrainer)(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    check_kept(len(train), len(trainer.train_dataset), recipe.data.max_length, "the prompt alone")
    console.info(f"{recipe.method.kind} policy: {describe_parameters(*count_parameters(trainer.model))}")
    return trainer
