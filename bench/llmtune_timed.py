"""`llmtune ARGS...` as a user runs it, with bench.common's step clock added to whatever trainer it builds.

Usage: python -m bench.llmtune_timed CLOCK_FILE sft --recipe r.yaml. The clock is attached by wrapping
`transformers.Trainer.__init__`, so llmtune's own code runs unchanged. With BENCH_COUNT_TOKENS=1 in the
environment, the trainer's collator is wrapped too: each batch's real (non-padding), trained and total (padded)
token counts go to CLOCK_FILE.tokens, one line per batch, in order.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def counting(collator: Any, pad_token_id: int, path: str) -> Any:
    """`collator`, also writing each batch's real tokens (attention_mask, else non-pad ids) and trained tokens."""
    handle = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open for the whole run

    def collate(rows: list[dict]) -> dict:
        batch = collator(rows)
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int((batch["input_ids"] != pad_token_id).sum())
        trained = int((batch["labels"][:, 1:] != -100).sum())
        handle.write(f"{real} {trained} {batch['input_ids'].numel()}\n")
        return batch

    return collate


def attach_clock(path: str, count_tokens: bool = False) -> None:
    """Every Trainer built from now on gets a step clock writing to `path` (and a token count, if asked)."""
    from transformers import Trainer

    from bench.common import step_clock

    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(step_clock(path))
        if count_tokens:
            self.data_collator = counting(self.data_collator, self.processing_class.pad_token_id, path + ".tokens")

    Trainer.__init__ = init


def main() -> None:
    clock, *argv = sys.argv[1:]
    attach_clock(clock, count_tokens=os.environ.get("BENCH_COUNT_TOKENS") == "1")
    if os.environ.get("BENCH_GEN_CLOCK"):
        from bench.trl_grpo import time_generate

        time_generate(os.environ["BENCH_GEN_CLOCK"])
    from llmtune.cli import main as cli

    sys.argv = ["llmtune", *argv]
    cli()


if __name__ == "__main__":
    main()
