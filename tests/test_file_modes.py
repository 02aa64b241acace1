"""Every file llmtune writes gets the mode the umask gives (safetensors writes weights 0600 on its own): the model
and adapter weights are as readable as the config and tokenizer beside them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_runner import run_main

UMASK = 0o002  # not the usual 022, so a hard-coded 0644 would fail too


@pytest.fixture
def umask() -> int:
    old = os.umask(UMASK)
    try:
        yield 0o666 & ~UMASK
    finally:
        os.umask(old)


def wrong_modes(root: Path, mode: int) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, root
    return {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != mode}


def test_init_model_sft_checkpoints_and_export_respect_the_umask(umask, tiny_recipe, tmp_path, capsys) -> None:
    from llmtune.jobs.init_model import init_model

    base = tmp_path / "base"
    init_model(base, preset="tiny", vocab_size=400, seed=0)
    assert (base / "model.safetensors").is_file()
    assert wrong_modes(base, umask) == {}

    recipe = tiny_recipe(model={"name_or_path": str(base)}, train={"max_steps": 2, "save_steps": 1})
    code, _, err = run_main(capsys, "sft", "--recipe", str(recipe))
    assert code == 0, err
    run_dir = tmp_path / "recipe-out"
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert wrong_modes(run_dir, umask) == {}

    out = tmp_path / "merged"
    code, _, err = run_main(capsys, "export", "--adapter", str(run_dir), "--out", str(out))
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    assert wrong_modes(out, umask) == {}
