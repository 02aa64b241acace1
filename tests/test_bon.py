"""Best-of-N end to end: `llmtune bon` samples with the tiny policy, scores with a real `llmtune rm` output, and
writes files that the sft / dpo data loaders accept, with each best answer the argmax of its scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llmtune.data.formats import RowError
from llmtune.data.load import load_splits
from llmtune.errors import UserError
from llmtune.infer.prompts import prompt_messages
from llmtune.infer.score import load_scorer, score
from llmtune.jobs.bon import BonOptions, best_of_n, pick
from llmtune.recipe import load_recipe
from llmtune.training.run import run

N = 4


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model_dir: Path, preference_data_dir: Path) -> Path:
    """A LoRA reward model trained for 4 steps: enough to give distinct scores, through the real rm stage."""
    root = tmp_path_factory.mktemp("bon-rm")
    recipe = {
        "stage": "rm",
        "model": {"name_or_path": str(tiny_model_dir)},
        "method": {"kind": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"train": [{"path": str(preference_data_dir / "preference.jsonl")}], "max_length": 64},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 2e-3, "save_steps": 1000},
        "output": {"dir": str(root / "rm")},
    }
    (root / "rm.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return Path(run(load_recipe(root / "rm.yaml")).output_dir)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def loads_as(tmp_path: Path, model: Path, stage: str, file: Path, fmt: str, **data) -> int:
    """Rows the recipe data loader reads from `file` as `fmt` for `stage`."""
    recipe = {
        "stage": stage,
        "model": {"name_or_path": str(model)},
        "data": {"train": [{"path": str(file), "format": fmt}], **data},
        "output": {"dir": str(tmp_path / f"{stage}-out")},
    }
    path = tmp_path / f"{stage}-{fmt}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return len(load_splits(load_recipe(path))[0])


def test_bon_cli_writes_best_answers_and_pairs_that_the_loaders_accept(
    tmp_path, tiny_model_dir, preference_data_dir, reward_dir
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = (preference_data_dir / "eval_preference.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    prompts.write_text("".join(lines[:6]), encoding="utf-8")
    out = tmp_path / "bon"
    cmd = [sys.executable, "-m", "llmtune", "bon", "--model", str(tiny_model_dir), "--reward", str(reward_dir)]
    cmd += ["--prompts", str(prompts), "--n", str(N), "--out", str(out), "--max-new-tokens", "8", "--seed", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    scored, best, pairs = (read_jsonl(out / name) for name in ("scored.jsonl", "best.jsonl", "pairs.jsonl"))
    assert len(scored) == 6 and all(len(r["responses"]) == len(r["scores"]) == N for r in scored)
    best_by_prompt = {json.dumps(r["messages"][:-1]): r for r in best}
    pairs_by_prompt = {json.dumps(r["prompt"]): r for r in pairs}
    for row in scored:
        key = json.dumps(row["prompt"])
        valid = [i for i, a in enumerate(row["responses"]) if a.strip()]
        if not valid:
            assert key not in best_by_prompt
            continue
        top = max(row["scores"][i] for i in valid)
        assert best_by_prompt[key]["messages"][-1] == {"role": "assistant", "content": row["responses"][
            row["scores"].index(top)]} and best_by_prompt[key]["reward"] == top  # fmt: skip
        if key in pairs_by_prompt:
            pair = pairs_by_prompt[key]
            assert pair["chosen"] != pair["rejected"] and pair["chosen_reward"] > pair["rejected_reward"]
            assert pair["rejected_reward"] == min(row["scores"][i] for i in valid)
    assert pairs, "some prompt should have answers of different scores"

    # the rewards are the reward model's: re-scoring the best answers gives the same numbers
    scorer = load_scorer(reward_dir)
    again = score(scorer.model, scorer.tokenizer, [r["messages"] for r in best])
    assert torch.allclose(again, torch.tensor([r["reward"] for r in best]), atol=1e-4)

    assert loads_as(tmp_path, tiny_model_dir, "sft", out / "best.jsonl", "messages") == len(best)
    assert loads_as(tmp_path, tiny_model_dir, "dpo", out / "pairs.jsonl", "preference") == len(pairs)
    skip = {"bad_rows": "skip"}  # rows whose answers all tie, or with an empty answer, are no valid ranking
    assert loads_as(tmp_path, tiny_model_dir, "rm", out / "scored.jsonl", "ranked", **skip) > 0


def test_pick_takes_the_top_non_empty_answer_and_the_lowest_different_one() -> None:
    assert pick(["a", "b", "c"], [0.1, 0.9, -0.5]) == (1, 2)
    assert pick(["", "b", "c"], [5.0, 0.9, -0.5]) == (1, 2)  # an empty answer is never best
    assert pick(["b", "b ", "c"], [0.9, 0.1, 0.9]) == (0, None)  # same text or same score: no pair
    assert pick(["", " "], [1.0, 2.0]) == (None, None)


def test_prompts_come_from_prompt_messages_or_text_columns() -> None:
    assert prompt_messages({"prompt": "Hi"}) == [{"role": "user", "content": "Hi"}]
    sft_row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert prompt_messages(sft_row) == [{"role": "user", "content": "Q"}]
    assert prompt_messages({"text": "A paragraph."}) == [{"role": "user", "content": "A paragraph."}]
    with pytest.raises(RowError, match="no prompt column"):
        prompt_messages({"question": "Q"})
    with pytest.raises(RowError, match="last one must be 'user'"):
        prompt_messages({"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})


def test_bad_bon_inputs_are_user_errors_before_any_sampling(tmp_path, tiny_model_dir, reward_dir) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q"}\n{"question": "no prompt here"}\n')
    base = {"model": str(tiny_model_dir), "reward": str(reward_dir), "prompts": prompts, "out": tmp_path / "o"}
    with pytest.raises(UserError, match="--n must be at least 2"):
        best_of_n(BonOptions(**base, n=1))
    with pytest.raises(UserError, match="--temperature must be above 0"):
        best_of_n(BonOptions(**base, temperature=0))
    with pytest.raises(UserError, match="is not a reward model"):
        best_of_n(BonOptions(**{**base, "reward": str(tiny_model_dir)}))
    with pytest.raises(UserError, match=rf"{prompts}:2: no prompt column"):
        best_of_n(BonOptions(**base))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="--overwrite"):
        best_of_n(BonOptions(**{**base, "out": tmp_path / "full"}))
