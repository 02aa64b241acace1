"""Every preference form reaches the rm and dpo trainers as the right tokens, and bad pairs stop the run (exit 2)
with a message naming the file and row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.errors import UserError
from llmtune.recipe import load_recipe
from llmtune.stages import dpo, rm
from llmtune.stages.args import common_training_args

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


# file name -> (rows, source options, the pairs we expect: (prompt messages, chosen text, rejected text))
FORMS = {
    "strings.jsonl": (
        [{"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}], {}, [([user("Add 2 and 3.")], "5", "6")]
    ),
    "multi_turn.jsonl": (
        [{"prompt": [SYSTEM, user("Hi"), bot("Hello"), user("Spell cat backwards.")],
          "chosen": [bot("tac")], "rejected": [bot("act")]}],
        {},
        [([SYSTEM, user("Hi"), bot("Hello"), user("Spell cat backwards.")], "tac", "act")],
    ),
    "implicit.jsonl": (
        [{"chosen": [user("Uppercase: owl"), bot("OWL")], "rejected": [user("Uppercase: owl"), bot("Owl")]}],
        {},
        [([user("Uppercase: owl")], "OWL", "Owl")],
    ),
    "ranked.jsonl": (
        [{"prompt": "Next letter after c?", "responses": ["e", "d", "b"], "scores": [0.5, 1.0, 0.0]}],
        {"format": "ranked"},
        [([user("Next letter after c?")], "d", "e"), ([user("Next letter after c?")], "d", "b")],
    ),
    "mapped.jsonl": (
        [{"question": "Count the letters in sun.", "good": "3", "bad": "4"}],
        {"format": "preference", "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}},
        [([user("Count the letters in sun.")], "3", "4")],
    ),
}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def all_forms(tmp_path: Path) -> list[dict]:
    return [{"path": str(write_jsonl(tmp_path / name, rows)), **opts} for name, (rows, opts, _) in FORMS.items()]


def expected_pairs() -> list[tuple[list[dict], str, str]]:
    return [pair for _, _, pairs in FORMS.values() for pair in pairs]


def pair_recipe(tiny_recipe, stage: str, sources: list[dict], **sections) -> object:
    train = {"max_steps": 1, "batch_size": 2, **sections.pop("train", {})}
    return load_recipe(tiny_recipe(stage=stage, method="lora", source=sources, train=train, **sections))


def test_every_preference_form_reaches_dpo_as_prompt_and_answer_tokens(tiny_recipe, all_forms) -> None:
    recipe = pair_recipe(tiny_recipe, "dpo", all_forms)
    trainer = dpo.build(recipe, common_training_args(recipe))
    tok = trainer.processing_class
    got = sorted(
        (tuple(row["prompt_ids"]), tuple(row["chosen_ids"]), tuple(row["rejected_ids"]))
        for row in trainer.train_dataset
    )
    want = []
    for prompt, chosen, rejected in expected_pairs():
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        full = [tok.apply_chat_template(prompt + [bot(a)], tokenize=True, return_dict=True) for a in (chosen, rejected)]
        n = len(prompt_ids["input_ids"])
        assert all(f["input_ids"][:n] == prompt_ids["input_ids"] for f in full)
        want.append((tuple(prompt_ids["input_ids"]), tuple(full[0]["input_ids"][n:]), tuple(full[1]["input_ids"][n:])))
    assert got == sorted(want)
    assert trainer.train().global_step == 1


def test_every_preference_form_reaches_rm_as_whole_conversations(tiny_recipe, all_forms) -> None:
    recipe = pair_recipe(tiny_recipe, "rm", all_forms)
    trainer = rm.build(recipe, common_training_args(recipe))
    tok = trainer.processing_class
    got = sorted((tuple(row["chosen_ids"]), tuple(row["rejected_ids"])) for row in trainer.train_dataset)

    def ids(messages: list[dict]) -> tuple[int, ...]:
        return tuple(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    want = sorted((ids(p + [bot(c)]), ids(p + [bot(r)])) for p, c, r in expected_pairs())
    assert got == want
    assert trainer.train().global_step == 1


BAD = {
    "same_answer": ({"prompt": "Q", "chosen": "A", "rejected": "A"}, "chosen and rejected are the same"),
    "missing_rejected": ({"prompt": "Q", "chosen": "A"}, "missing column 'rejected'"),
    "same_messages": (
        {"prompt": [user("Q")], "chosen": [bot("A")], "rejected": [bot("A")]},
        "chosen and rejected are the same",
    ),
    "ranked_ties": ({"prompt": "Q", "responses": ["A", "B"], "scores": [1, 1]}, "same score"),
    "no_shared_prompt": ({"chosen": [user("Q"), bot("A")], "rejected": [user("R"), bot("B")]}, "share no prompt"),
}


def bad_file(tmp_path: Path, bad_row: dict) -> Path:
    good = {"prompt": "Add 1 and 1.", "chosen": "2", "rejected": "3"}
    if "responses" in bad_row:
        good = {"prompt": "Add 1 and 1.", "responses": ["2", "3"], "scores": [1, 0]}
    return write_jsonl(tmp_path / "bad.jsonl", [good, good, bad_row, good])


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_a_bad_pair_names_file_and_row(tiny_recipe, tmp_path, case, stage) -> None:
    row, reason = BAD[case]
    path = bad_file(tmp_path, row)
    recipe = pair_recipe(tiny_recipe, stage, [{"path": str(path)}])
    build = rm.build if stage == "rm" else dpo.build
    with pytest.raises(UserError) as caught:
        build(recipe, common_training_args(recipe))
    assert f"{path}:3" in str(caught.value) and reason in str(caught.value)


def test_cli_exits_2_on_a_bad_pair(tiny_recipe, tmp_path) -> None:
    stage, (row, reason) = "dpo", BAD["same_answer"]
    path = bad_file(tmp_path, row)
    recipe = tiny_recipe(stage=stage, method="lora", source=[{"path": str(path)}])
    cmd = [sys.executable, "-m", "llmtune", stage, "--recipe", str(recipe)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert f"{path}:3" in message and reason in message and "Traceback" not in result.stderr
    assert not (tmp_path / "recipe-out").exists()


def test_bad_rows_skip_trains_on_the_rest(tiny_recipe, tmp_path) -> None:
    path = bad_file(tmp_path, BAD["same_answer"][0])
    recipe = pair_recipe(tiny_recipe, "dpo", [{"path": str(path)}], data={"bad_rows": "skip"})
    trainer = dpo.build(recipe, common_training_args(recipe))
    assert len(trainer.train_dataset) == 3
