"""Shared fixtures: models and data built locally, once per session, so no test needs the hub."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA (2 layers, hidden 64) with a 512-token ChatML tokenizer, written once; treat it as read-only."""
    from llmtune.init_model import init_model

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    init_model(out, preset="tiny", vocab_size=512, seed=0)
    return out
