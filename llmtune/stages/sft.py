"""Supervised fine-tuning: the recipe's model and method, our tokenized data, TRL's SFTTrainer.

Data are tokenized by llmtune.data (masks, packing, cache), so TRL's own dataset preparation is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from trl import SFTTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> SFTTrainer:
    """Tokenizer, data (before the model, so bad data fail fast), model with its method, then the trainer."""
    from trl import SFTConfig, SFTTrainer

    from llmtune import modeling
    from llmtune.data.tokenize import prepare
    from llmtune.train import build_config

    tokenizer = modeling.load_tokenizer(recipe)
    data = prepare(recipe, tokenizer, model_dir=modeling.model_dir(recipe))
    model = modeling.apply_method(modeling.load_model(recipe), recipe, "CAUSAL_LM")
    console.info(f"{recipe.method.kind}: {modeling.describe_parameters(*modeling.count_parameters(model))}")
    # Packed rows carry seq_lengths: TRL's padding-free collator turns them into position_ids that restart per
    # example, from which transformers builds a block-diagonal mask. `packing=True` with skip_prepare_dataset only
    # selects that collator (TRL refuses padding_free without packing while max_length is set).
    config = build_config(
        SFTConfig,
        args_common,
        max_length=recipe.data.max_length,
        packing=recipe.packing,
        padding_free=recipe.packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
    )
