"""Runs that can be trusted: the output dir's contents, refusal to mix runs, safe overwrite, exact resume after a
kill, pretraining from an init-model model, and packing that keeps examples apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from freeze import step_until
from safetensors.torch import load_file

from llmtune.errors import UserError
from llmtune.recipe import load_recipe
from llmtune.stages.args import common_training_args
from llmtune.training.run import run
from llmtune.training.rundir import output_guard


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with the hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtune", *args], cwd=cwd, capture_output=True, text=True)


def test_a_run_writes_recipe_metrics_model_tokenizer_summary_and_checkpoints(tiny_recipe, tiny_data_dir) -> None:
    path = tiny_recipe(
        method="full",
        train={"max_steps": 6, "save_steps": 3, "lr": 3.0e-3, "report_to": ["tensorboard"]},
        data={"eval": [{"path": str(tiny_data_dir / "eval_messages.jsonl")}]},
    )
    recipe = load_recipe(path)
    result = run(recipe)
    out = Path(result.output_dir)

    assert load_recipe(out / "recipe.yaml") == recipe
    assert "transformers 5." in (out / "recipe.yaml").read_text().splitlines()[1]
    rows = metric_rows(out)
    losses = [row["loss"] for row in rows if "loss" in row]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]
    # first two minus last two losses over train.seed 0-19: 1.12 / 1.63 / 1.98 (min / mean / max)
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.8, losses
    assert any(row["step"] == 6 and "eval_loss" in row for row in rows)

    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert not (out / ".final-tmp").exists() and not (out / "training_args.bin").exists()
    for step in (3, 6):
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            assert (out / f"checkpoint-{step}" / name).is_file()
    assert list(out.rglob("events.out.tfevents*")), "TensorBoard logs"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final_loss"] == losses[-1]
    assert summary["trainable_params"] == summary["total_params"] == 156_480
    assert summary["eval_loss"] == result.eval_loss is not None


def test_a_non_empty_output_dir_is_refused_and_left_untouched(tiny_recipe, tmp_path) -> None:
    path = tiny_recipe()
    out = Path(load_recipe(path).output.dir)
    (out / "checkpoint-9").mkdir(parents=True)
    (out / "notes.txt").write_text("an earlier run")
    before = snapshot(out)
    proc = cli("sft", "--recipe", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "is not empty" in proc.stderr and "--set output.overwrite=true" in proc.stderr
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before


def test_command_and_stage_must_agree_and_resume_needs_a_checkpoint(tiny_recipe, tmp_path) -> None:
    path = tiny_recipe(stage="sft")
    proc = cli("pt", "--recipe", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"recipe {path} has stage: sft; run llmtune sft --recipe {path}" in proc.stderr.replace("\n", "")
    proc = cli("sft", "--recipe", str(path), "--resume", cwd=tmp_path)
    assert proc.returncode == 2
    assert "has no checkpoint to resume from" in proc.stderr


def test_overwrite_replaces_the_old_run_only_once_the_new_one_succeeds(tiny_recipe, tmp_path) -> None:
    path = tiny_recipe(method="full", train={"max_steps": 2})
    out = Path(run(load_recipe(path)).output_dir)
    before = snapshot(out)
    assert "checkpoint-2/trainer_state.json" in before

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl"):
        run(load_recipe(path, ["output.overwrite=true", f"data.train.0.path={bad}"]))
    assert snapshot(out) == before

    with pytest.raises(ValueError, match="eval"):  # fails inside trainer.train, after the old run was moved aside
        run(load_recipe(path, ["output.overwrite=true", "train.extra.eval_on_start=true"]))
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if ".previous-" in p.name] == []

    result = run(load_recipe(path, ["output.overwrite=true", "train.max_steps=3"]))
    assert result.steps == 3
    assert not (out / "checkpoint-2").exists() and (out / "checkpoint-3").is_dir()
    assert [p.name for p in tmp_path.iterdir() if ".previous-" in p.name] == []


def test_output_guard_restores_the_old_contents_when_the_block_fails(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), output_guard(out, replace=True):
        assert not (out / "old.txt").exists()
        (out / "new.txt").write_text("new")
        raise RuntimeError("training failed")
    assert snapshot(out) == {"old.txt": hashlib.sha256(b"old").hexdigest()}
    with output_guard(out, replace=True):
        (out / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_resume_after_a_kill_gives_the_uninterrupted_run_exactly(tiny_recipe, tmp_path) -> None:
    train = {"max_steps": 10, "save_steps": 3}
    lora = {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    a = run(load_recipe(tiny_recipe(method=lora, name="a", train=train)))
    b_path = tiny_recipe(method=lora, name="b", train=train)
    b_out = Path(load_recipe(b_path).output.dir)

    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "sft", "--recipe", str(b_path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (b_out / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "run B ended before its first step"
        time.sleep(0.02)
    sealed = b_out / "checkpoint-3" / "checkpoint_complete.json"
    assert step_until(proc, sealed.is_file), "run B ended before its first checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (b_out / "summary.json").exists()

    resumed = cli("sft", "--recipe", str(b_path), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    weights_a = load_file(Path(a.output_dir) / "adapter_model.safetensors")
    weights_b = load_file(b_out / "adapter_model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    rows_a = [r for r in metric_rows(Path(a.output_dir)) if "loss" in r]
    rows_b = [r for r in metric_rows(b_out) if "loss" in r]
    assert [r["step"] for r in rows_b] == list(range(1, 11)), "one row per step, none repeated after the resume"
    for key in ("loss", "grad_norm", "learning_rate"):
        assert [r[key] for r in rows_b] == pytest.approx([r[key] for r in rows_a], abs=1e-6), key


def test_pt_trains_packed_text_on_an_init_model_model(tiny_recipe, tiny_data_dir) -> None:
    path = tiny_recipe(
        stage="pt",
        method="full",
        train={"max_steps": 8, "lr": 3.0e-3, "extra": {"eval_on_start": True}},
        data={"eval": [{"path": str(tiny_data_dir / "eval_text.jsonl")}]},
    )
    result = run(load_recipe(path))
    train = result.trainer.train_dataset
    assert "seq_lengths" in train.column_names
    assert max(len(ids) for ids in train["input_ids"]) <= 128
    assert any(len(lengths) > 1 for lengths in train["seq_lengths"]), "several documents share a row"
    evals = [row["eval_loss"] for row in metric_rows(Path(result.output_dir)) if "eval_loss" in row]
    assert evals[-1] < evals[0] - 1.0, evals


def test_a_packed_batch_has_the_loss_of_its_examples_run_apart(tiny_recipe) -> None:
    from llmtune.stages import get_stage

    recipe = load_recipe(tiny_recipe(method="full", data={"packing": True}))
    trainer = get_stage("sft").build(recipe, common_training_args(recipe))
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and "position_ids" in batch
    model = trainer.model.eval()
    total, count, examples = 0.0, 0, 0
    with torch.no_grad():
        packed = float(trainer.compute_loss(model, dict(batch)))
        for row in range(batch["input_ids"].shape[0]):
            positions = batch["position_ids"][row]
            starts = (positions == 0).nonzero().flatten().tolist() + [positions.shape[0]]
            for lo, hi in zip(starts[:-1], starts[1:], strict=True):
                ids, labels = batch["input_ids"][row : row + 1, lo:hi], batch["labels"][row : row + 1, lo:hi]
                n = int((labels[:, 1:] != -100).sum())
                if n:
                    total += float(model(input_ids=ids, labels=labels).loss) * n
                    count += n
                    examples += 1
        leaky = float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
    assert examples > batch["input_ids"].shape[0], "rows hold several examples"
    assert packed == pytest.approx(total / count, abs=1e-5)
    assert abs(leaky - packed) > 1e-4, "attending across examples would change the loss (by far more than 1e-5)"
