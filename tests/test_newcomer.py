"""What a new user hit (issue 12), each checked where it happened: optional extras on default paths, resuming with
a changed recipe, and output that is noise (load reports, bars in logs, a data line printed twice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import run_main as cli

from llmtune.errors import UserError, has_module, install_hint, require_module


def test_a_missing_extra_is_one_message_naming_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if the metrics extra were not installed
    assert not has_module("rouge_score") and has_module("json")
    assert install_hint("rouge_score") == "pip install 'llmtune[metrics]'"
    with pytest.raises(UserError, match=r"needs the rouge-score package: pip install 'llmtune\[metrics\]'"):
        require_module("rouge_score", "ROUGE-L")


def test_default_eval_on_chat_data_runs_without_the_metrics_extra(tiny_model_dir, tiny_data_dir, monkeypatch, capsys):
    """The default `llmtune eval` on chat data generates and scores; without rouge-score it skips ROUGE-L with a
    one-line note instead of an ImportError traceback, and prints one prompt with expected and generated answers."""
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    code, out, err = cli(capsys, "eval", "--model", str(tiny_model_dir), "--data",
                         str(tiny_data_dir / "eval_messages.jsonl"), "--max-samples", "3", "--max-new-tokens", "4",
                         "--show", "2")  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in err and "ROUGE-L skipped" in err and "llmtune[metrics]" in err
    assert "exact_match" in out and "rougeL" not in out
    assert "prompt 1:" in out and "prompt 2:" in out and "prompt 3:" not in out and "expected" in out
    # the data line is the table's title, printed once
    assert (out + err).count("eval_messages.jsonl (3 chat rows)") == 1


def _lora_run(tiny_recipe, tmp_path: Path, **train) -> tuple[Path, Path]:
    recipe = tiny_recipe(train={"max_steps": 4, "save_steps": 2, **train}, method={"kind": "lora", "lora": {"r": 8}})
    code = subprocess.run([sys.executable, "-m", "llmtune", "-q", "sft", "--recipe", str(recipe)],
                          capture_output=True, text=True).returncode  # fmt: skip
    assert code == 0
    return recipe, tmp_path / "recipe-out"


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (["method.lora.r=16"], ["method.lora.r: 8 -> 16"]),
        (["train.lr=0.5", "data.max_length=64"], ["train.lr: 0.01 -> 0.5", "data.max_length: 128 -> 64"]),
    ],
    ids=["lora-rank", "lr-and-length"],
)
def test_resume_refuses_a_changed_recipe_naming_the_keys(tiny_recipe, tmp_path, capsys, sets, named) -> None:
    """`--resume --set method.lora.r=16` on an r=8 run ended in a size-mismatch traceback; now exit 2, one message
    naming every changed key, and the run directory untouched."""
    recipe, out = _lora_run(tiny_recipe, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["sft", "--recipe", str(recipe), "--resume", *(x for s in sets for x in ("--set", s))]
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and "--resume" in err and "resume with the run's own recipe" in err
    for text in named:
        assert text in err.replace("'", "")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_allows_and_lists_safe_changes(tiny_recipe, tmp_path, capsys) -> None:
    recipe, out = _lora_run(tiny_recipe, tmp_path)
    code, _, err = cli(capsys, "sft", "--recipe", str(recipe), "--resume", "--set", "train.max_steps=6",
                       "--set", "train.logging_steps=2")  # fmt: skip
    assert code == 0, err
    assert "resuming with changed settings: train.logging_steps, train.max_steps" in err
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["max_steps"] == 6


def test_training_output_in_a_log_has_no_bars_and_quiet_is_quiet(tiny_recipe, tmp_path) -> None:
    """Not a terminal: one line per log step, no tqdm bars or carriage returns, no load report; -q: nothing but
    the result line. The dir is checked before 'writing the run to' is printed."""
    recipe = tiny_recipe(train={"max_steps": 2})
    proc = subprocess.run([sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "Loading weights" not in proc.stderr
    assert "LOAD REPORT" not in proc.stderr and "step 1/2  loss" in proc.stderr and "step 2/2  loss" in proc.stderr
    again = subprocess.run([sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe)],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "writing the run to" not in again.stderr and "is not empty" in again.stderr
    quiet = subprocess.run([sys.executable, "-m", "llmtune", "-q", "sft", "--recipe", str(recipe),
                            "--set", "output.overwrite=true"], capture_output=True, text=True)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.startswith("done: 2 steps")


def test_eval_of_a_reward_model_prints_no_load_report(tiny_recipe, preference_data_dir, tmp_path) -> None:
    recipe = tiny_recipe(stage="rm", source="preference.jsonl", train={"max_steps": 2})
    assert subprocess.run([sys.executable, "-m", "llmtune", "-q", "rm", "--recipe", str(recipe)]).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "llmtune", "eval", "--model", str(tmp_path / "recipe-out"), "--data",
                           str(preference_data_dir / "eval_preference.jsonl"), "--max-samples", "8"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "LOAD REPORT" not in proc.stderr and "MISSING" not in proc.stderr and "reward_accuracy" in proc.stdout
