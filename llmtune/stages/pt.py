"""Continued pretraining: causal LM on every token of plain text, packed by default.

The mechanism is SFT's; only the defaults differ (Recipe.packing is on for pt, and llmtune.data trains every
token of text rows), so this stage delegates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.schema import Recipe
from llmtune.stages import sft

if TYPE_CHECKING:
    from trl import SFTTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> SFTTrainer:
    """The SFT trainer on the recipe's text, with pretraining defaults already resolved by the recipe."""
    return sft.build(recipe, args_common)
