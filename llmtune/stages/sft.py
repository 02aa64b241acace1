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
    from llmtune.stages.args import build_config

    tokenizer = modeling.load_tokenizer(recipe)
    data = prepare(recipe, tokenizer, model_dir=modeling.model_dir(recipe))
    model = modeling.apply_method(modeling.load_model(recipe), recipe, "CAUSAL_LM")
    console.info(f"{recipe.method.kind}: {modeling.describe_parameters(*modeling.count_parameters(model))}")
    config = build_config(
        SFTConfig,
        args_common,
        max_length=recipe.data.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
        **_packing_keys(recipe),
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        data_collator=_packed_collator(recipe, tokenizer),
    )
    return trainer


def _packing_keys(recipe: Recipe) -> dict[str, Any]:
    """With flash attention, TRL's padding-free collator (one varlen sequence per batch) is the fast path.

    `packing=True` with skip_prepare_dataset only selects that collator (TRL refuses padding_free without packing
    while max_length is set); the data are already packed by llmtune.data.
    """
    varlen = recipe.packing and recipe.model.attn_implementation == "flash_attention_2"
    return {"packing": varlen, "padding_free": varlen}


def _packed_collator(recipe: Recipe, tokenizer: Any) -> Any:
    """For sdpa and eager attention, packed rows stay apart in the batch (see llmtune.data.collate for the figures)."""
    if not recipe.packing or recipe.model.attn_implementation == "flash_attention_2":
        return None
    from llmtune.data.collate import PackedRowsCollator

    return PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)
