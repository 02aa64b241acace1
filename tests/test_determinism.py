"""The same recipe and seed give the same weights in any process: a short LoRA SFT run twice in fresh processes.

What may differ between the two processes, as it does between two `make test` runs: the hash seed, the thread
count, and where the data and model sit on disk (pytest's temporary directories are numbered per session).
What is compared: every tensor of adapter_model.safetensors (torch.equal) and every loss in metrics.jsonl.

The run keeps what a run draws at random: LoRA's random A init, dropout, the sampler's order and a seeded
`max_samples` subset of the data (whose choice once depended on the data file's full path).

Thread count: with the tiny model on CPU, 1 and 2 threads give bit-identical weights (measured). That is not a
guarantee for larger models or other kernels: a reduction split across threads can round differently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import llmtune

ROOT = Path(llmtune.__file__).resolve().parents[1]
TIMING = ("runtime", "per_second")


def write_recipe(where: Path, model: Path, data: Path) -> Path:
    """A 4-step LoRA SFT (dropout on, random A init) on a seeded 8-row subset, evaluated at the start and end."""
    source = {"path": str(data / "sft_messages.jsonl"), "max_samples": 8}
    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
        "data": {"train": [source], "eval": [source], "max_length": 128, "cache_dir": str(where / "cache")},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1.0e-2, "scheduler": "constant", "logging_steps": 1,
                  "save_steps": 1000, "seed": 3, "extra": {"eval_on_start": True}},
        "output": {"dir": str(where / "out")},
    }  # fmt: skip
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def train_in_fresh_process(where: Path, model: Path, data: Path, hash_seed: str, threads: str) -> Path:
    """`llmtune sft` in a new interpreter, on copies of the model and data placed under `where`."""
    where.mkdir(parents=True)
    model_copy, data_copy = where / "elsewhere" / "model", where / "elsewhere" / "data"
    shutil.copytree(model, model_copy)
    data_copy.mkdir(parents=True)
    shutil.copy(data / "sft_messages.jsonl", data_copy)
    recipe = write_recipe(where, model_copy, data_copy)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-m", "llmtune", "--quiet", "sft", "--recipe", str(recipe)],
        env=env, cwd=where, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return where / "out"


def losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{len(different)} of {len(first)} adapter tensors differ, first {different[0]}"
    assert losses(a) == losses(b)
    assert any("eval_loss" in row for row in losses(a)) and any("loss" in row for row in losses(a))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_data_dir: Path) -> Path:
    return train_in_fresh_process(tmp_path_factory.mktemp("det") / "a", tiny_model_dir, tiny_data_dir, "1", "1")


def test_same_recipe_and_seed_give_identical_adapters_across_processes_hash_seeds_and_paths(
    first_run, tmp_path, tiny_model_dir, tiny_data_dir
) -> None:
    again = train_in_fresh_process(tmp_path / "b" / "deeper", tiny_model_dir, tiny_data_dir, "2", "1")
    assert_same_run(first_run, again)


def test_one_or_two_threads_give_identical_adapters_for_the_tiny_model(
    first_run, tmp_path, tiny_model_dir, tiny_data_dir
) -> None:
    two_threads = train_in_fresh_process(tmp_path / "c", tiny_model_dir, tiny_data_dir, "3", "2")
    assert_same_run(first_run, two_threads)
