"""Shared fixtures: models and data built locally, once per session, so no test needs the hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in the CLIs they start), or OpenMP's
    # spinning threads oversubscribe the cores and every step gets several times slower.
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA (2 layers, hidden 64) with a 512-token ChatML tokenizer, written once; treat it as read-only."""
    from llmtune.jobs.init_model import init_model

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    init_model(out, preset="tiny", vocab_size=512, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in synthetic data files, small (32 train / 8 eval rows each), written once; treat as read-only."""
    from llmtune.data.synth import write_builtin_data

    out = tmp_path_factory.mktemp("tiny-data")
    write_builtin_data(out, n_train=32, n_eval=8, seed=0)
    return out


TINY_TRAIN = {
    "max_steps": 8,
    "batch_size": 4,
    "lr": 1.0e-2,
    "scheduler": "constant",
    "logging_steps": 1,
    "save_steps": 1000,
    "seed": 0,
}


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path):
    """A function writing a small training recipe for the tiny model into tmp_path and returning its path.

    tiny_recipe(stage="sft", method="lora", source="sft_messages.jsonl", name="recipe", **sections): `method` is a
    kind or a whole method block; `source` a file name in tiny_data_dir or a list of data.train entries; each
    section (train={...}, data={...}, output={...}, model={...}) is deep-merged over the defaults. The output dir
    defaults to tmp_path / f"{name}-out".
    """
    import yaml

    from llmtune.recipe import deep_merge

    def make(
        stage: str = "sft",
        method: str | dict = "lora",
        source: str | list | None = None,
        name: str = "recipe",
        **sections,
    ) -> Path:
        source = source or ("text.jsonl" if stage == "pt" else "sft_messages.jsonl")
        train_sources = [{"path": str(tiny_data_dir / source)}] if isinstance(source, str) else source
        recipe = {
            "stage": stage,
            "model": {"name_or_path": str(tiny_model_dir)},
            "method": method if isinstance(method, dict) else {"kind": method},
            "data": {"train": train_sources, "max_length": 128, "cache_dir": str(tmp_path / "cache")},
            "train": dict(TINY_TRAIN),
            "output": {"dir": str(tmp_path / f"{name}-out")},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(recipe, sections), sort_keys=False), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def preference_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in data with more pairs (128 train; 192 held out, 24 per task) for rm/dpo/bon tests; read-only."""
    from llmtune.data.synth import write_builtin_data

    out = tmp_path_factory.mktemp("preference-data")
    write_builtin_data(out, n_train=128, n_eval=192, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_sft_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_data_dir: Path) -> Path:
    """A real `sft` LoRA run dir (8 steps at lr 1e-2, so the adapter moves the model) to chain later stages onto."""
    import yaml

    from llmtune.recipe import load_recipe
    from llmtune.training.run import run

    root = tmp_path_factory.mktemp("sft-adapter")
    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(tiny_model_dir)},
        "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"train": [{"path": str(tiny_data_dir / "sft_messages.jsonl")}], "max_length": 128,
                 "cache_dir": str(root / "cache")},
        "train": dict(TINY_TRAIN),
        "output": {"dir": str(root / "sft")},
    }  # fmt: skip
    (root / "sft.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return Path(run(load_recipe(root / "sft.yaml")).output_dir)
