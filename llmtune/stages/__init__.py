"""The stage registry: stage name -> the module that builds its trainer, imported only when that stage runs.

A stage module exposes `build(recipe, args_common) -> Trainer`; llmtune.training.run.run does the rest.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llmtune.errors import UserError

STAGES: dict[str, str] = {
    "pt": "llmtune.stages.pt",
    "sft": "llmtune.stages.sft",
    "rm": "llmtune.stages.rm",
    "dpo": "llmtune.stages.dpo",
    "kto": "llmtune.stages.kto",
    "orpo": "llmtune.stages.orpo",
    "cpo": "llmtune.stages.orpo",
    "grpo": "llmtune.stages.grpo",
    "rloo": "llmtune.stages.grpo",
    "cls": "llmtune.stages.cls",
}


def get_stage(name: str) -> ModuleType:
    """The stage's module (with its `build`), imported lazily so unrelated stages cost nothing."""
    if name not in STAGES:
        raise UserError(f"stage {name!r} is unknown; known stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])
