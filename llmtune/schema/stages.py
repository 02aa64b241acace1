"""Which stages exist, which row formats each reads, and which recipe blocks belong to which stages."""

from __future__ import annotations

from typing import Literal

Stage = Literal["pt", "sft", "rm", "dpo", "kto", "orpo", "cpo", "grpo", "rloo", "cls"]
DataFormat = Literal["alpaca", "sharegpt", "messages", "text", "preference", "ranked", "prompt", "kto", "cls"]
CHAT_FORMATS = ("alpaca", "sharegpt", "messages")
PREFERENCE_FORMATS = ("preference", "ranked")
FORMATS_OF_STAGE: dict[str, tuple[str, ...]] = {
    "pt": ("text",),
    "sft": (*CHAT_FORMATS, "text"),
    "rm": PREFERENCE_FORMATS,
    "dpo": PREFERENCE_FORMATS,
    "kto": ("kto", *PREFERENCE_FORMATS),
    "orpo": PREFERENCE_FORMATS,
    "cpo": PREFERENCE_FORMATS,
    "grpo": ("prompt", *CHAT_FORMATS, *PREFERENCE_FORMATS),
    "rloo": ("prompt", *CHAT_FORMATS, *PREFERENCE_FORMATS),
    "cls": ("cls",),
}
"""The row formats each stage reads (kto splits pairs into rows; grpo/rloo take the prompts of chat and pairs)."""
STAGE_BLOCKS = {"dpo": ("dpo",), "kto": ("kto",), "orpo": ("orpo",), "cpo": ("cpo",), "rl": ("grpo", "rloo")}
"""The recipe blocks that belong to some stages only."""
