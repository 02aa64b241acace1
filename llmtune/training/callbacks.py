"""Trainer callbacks: metrics.jsonl (and first-step timing), and one readable progress line per log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.training import checkpoints


def metrics_logger(path: Path) -> Any:
    """A light TrainerCallback: each log dict becomes a row of metrics.jsonl; it also times the first step."""
    from transformers import TrainerCallback

    class MetricsLogger(TrainerCallback):
        def __init__(self) -> None:
            self.train_begin = self.first_step_end = self.train_end = None
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if self.first_step_end is None:
                self.first_step_end = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.train_end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
                with checkpoints.write_errors(path.parent, path.name), path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

        def timings(self, steps: int) -> tuple[float | None, float | None]:
            if self.first_step_end is None or self.train_begin is None or self.train_end is None:
                return None, None
            later = steps - self.first_step - 1
            step_s = (self.train_end - self.first_step_end) / later if later > 0 else None
            return self.first_step_end - self.train_begin, step_s

    return MetricsLogger()


_SHOWN = (
    "loss",
    "eval_loss",
    "grad_norm",
    "learning_rate",
    "mean_token_accuracy",
    "rewards/accuracies",
    "reward",
    "kl",
)
# TRL's online-RL names -> the progress line's: total reward, each reward's mean, completion length, clipped share
_RENAMED = {"learning_rate": "lr", "completions/mean_length": "len", "completions/clipped_ratio": "clipped"}


def progress_printer() -> Any:
    """transformers' progress bar, but each log is one readable line ("step 20/150  loss 4.915 ...") not a dict."""
    from transformers import ProgressCallback

    class ProgressPrinter(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and self.training_bar is not None and logs):
                return
            if line := _log_line(state, logs):
                self.training_bar.write(line)

    return ProgressPrinter()


def line_printer() -> Any:
    """Without a terminal (a log file, a pipe): no bar, the same one line per log, through the console."""
    from transformers import TrainerCallback

    class LinePrinter(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and (line := _log_line(state, logs)):
                console.info(line, markup=False)

    return LinePrinter()


def _short(key: str) -> str | None:
    """The name a logged key gets in the progress line (rewards/exact/mean -> exact), None when not shown."""
    if key in _RENAMED:
        return _RENAMED[key]
    if key.startswith("rewards/") and key.endswith("/mean"):
        return key[len("rewards/") : -len("/mean")]
    return key if key in _SHOWN else None


def _log_line(state: Any, logs: dict[str, Any]) -> str | None:
    shown = [f"{_short(k)} {v:.4g}" for k, v in logs.items() if _short(k) and isinstance(v, (int, float))]
    return f"step {state.global_step}/{state.max_steps}  " + "  ".join(shown) if shown else None


def partial_checkpointing(share: float) -> Any:
    """A TrainerCallback that, once the trainer has turned activation checkpointing on for every decoder layer,
    turns it back off for all but `share` of them, evenly spaced (layer i is kept checkpointed when
    floor((i + 1) * share) > floor(i * share): every other one for 0.5)."""
    from transformers import TrainerCallback

    from llmtune.modeling import decoder_layers

    class PartialCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            for i, layer in enumerate(decoder_layers(base)[1]):
                if hasattr(layer, "gradient_checkpointing"):
                    layer.gradient_checkpointing = int((i + 1) * share) > int(i * share)

    return PartialCheckpointing()
