"""The built-in synthetic data: deterministic, well-formed in every format, correct answers, eval held out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.data.synth import (
    TASKS,
    check_answer,
    held_out_examples,
    make_examples,
    text_corpus,
    write_builtin_data,
)
from llmtune.data.synth_tasks import WORDS
from llmtune.errors import UserError

N_TRAIN, N_EVAL = 400, 60
KEYS = {
    "sft_alpaca.jsonl": {"instruction", "input", "output"},
    "sft_messages.jsonl": {"messages"},
    "sft_sharegpt.jsonl": {"conversations"},
    "preference.jsonl": {"prompt", "chosen", "rejected"},
    "preference_chat.jsonl": {"prompt", "chosen", "rejected"},
    "ranked.jsonl": {"prompt", "responses", "scores"},
    "text.jsonl": {"text"},
    "cls.jsonl": {"text", "label"},
    "eval_messages.jsonl": {"messages", "answer"},
    "eval_alpaca.jsonl": {"instruction", "input", "output"},
    "eval_preference.jsonl": {"prompt", "chosen", "rejected"},
    "eval_text.jsonl": {"text"},
    "eval_mc.jsonl": {"question", "subject", "choices", "answer"},
    "dev_mc.jsonl": {"question", "subject", "choices", "answer"},
    "eval_cls.jsonl": {"text", "label"},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_builtin_data(out, n_train=N_TRAIN, n_eval=N_EVAL, seed=0)
    return out


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, data_dir: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    paths = write_builtin_data(again, n_train=N_TRAIN, n_eval=N_EVAL, seed=0)
    write_builtin_data(other, n_train=N_TRAIN, n_eval=N_EVAL, seed=1)
    assert set(paths) == set(KEYS) | {"text.txt"}
    for name, path in paths.items():
        assert path.read_bytes() == (data_dir / name).read_bytes(), name
        assert path.read_bytes() != (other / name).read_bytes(), name
    assert make_examples(50, 7) == make_examples(50, 7) != make_examples(50, 8)


def test_every_file_parses_with_documented_keys(data_dir: Path) -> None:
    for name, keys in KEYS.items():
        rows = read_rows(data_dir / name)
        assert len(rows) == (N_EVAL if name.startswith("eval_") else 15 if name == "dev_mc.jsonl" else N_TRAIN), name
        for row in rows:
            assert keys <= set(row), (name, row)
            assert set(row) - keys <= {"system", "history"}, (name, row)
    docs = (data_dir / "text.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert docs == [row["text"] for row in read_rows(data_dir / "text.jsonl")]


def assert_alternates(roles: list[str], user: str, assistant: str) -> None:
    body = roles[1:] if roles[0] == "system" else roles
    assert "system" not in body
    assert body == [user, assistant] * (len(body) // 2) and len(body) >= 2, roles


def test_conversations_alternate_and_include_multi_turn(data_dir: Path) -> None:
    convs = [row["messages"] for row in read_rows(data_dir / "sft_messages.jsonl")]
    for conv in convs:
        assert_alternates([m["role"] for m in conv], "user", "assistant")
        assert all(isinstance(m["content"], str) and m["content"] for m in conv)
    user_turns = [sum(m["role"] == "user" for m in conv) for conv in convs]
    assert {1, 2, 3} <= set(user_turns)
    assert any(conv[0]["role"] == "system" for conv in convs)
    assert any(conv[0]["role"] != "system" for conv in convs)

    for row in read_rows(data_dir / "sft_sharegpt.jsonl"):
        assert_alternates([t["from"] for t in row["conversations"]], "human", "gpt")
    for row in read_rows(data_dir / "eval_messages.jsonl"):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][-1]["content"] == row["answer"]


def test_alpaca_rows_mix_input_system_and_history(data_dir: Path) -> None:
    rows = read_rows(data_dir / "sft_alpaca.jsonl")
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    assert any("system" in r for r in rows)
    histories = [r["history"] for r in rows if "history" in r]
    assert histories
    for history in histories:
        assert all(len(pair) == 2 and all(isinstance(s, str) and s for s in pair) for pair in history)


def test_preferences_differ_and_ranked_puts_correct_answer_first(data_dir: Path) -> None:
    for name in ("preference.jsonl", "eval_preference.jsonl"):
        for row in read_rows(data_dir / name):
            assert row["chosen"] != row["rejected"] and not check_answer(row["chosen"], row["rejected"])
    for row in read_rows(data_dir / "preference_chat.jsonl"):
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    preference = read_rows(data_dir / "preference.jsonl")
    for row, pref in zip(read_rows(data_dir / "ranked.jsonl"), preference, strict=True):
        assert len(row["responses"]) == len(set(row["responses"])) == len(row["scores"]) == 3
        best = row["responses"][row["scores"].index(max(row["scores"]))]
        assert (row["prompt"], best) == (pref["prompt"], pref["chosen"])


def test_cls_labels_follow_the_text_are_balanced_and_held_out(data_dir: Path) -> None:
    from llmtune.data.synth_cls import TOPIC_WORDS, cls_label

    train, evals = read_rows(data_dir / "cls.jsonl"), read_rows(data_dir / "eval_cls.jsonl")
    for rows in (train, evals):
        assert all(cls_label(row["text"]) == row["label"] for row in rows)
        counts = [sum(row["label"] == topic for row in rows) for topic in TOPIC_WORDS]
        assert max(counts) - min(counts) <= 1, counts
    assert not {row["text"] for row in evals} & {row["text"] for row in train}
    assert cls_label("The cat ate the cake.") is None and cls_label("A pen.") is None


def test_check_answer() -> None:
    assert check_answer("8", " 8.\n") and check_answer("1 2 3", "1 2 3")
    assert not check_answer("8", "9") and not check_answer("CAT", "Cat") and not check_answer("8", "8 8")
    for ex in make_examples(800, 3):
        assert check_answer(ex.answer, ex.answer) and not check_answer(ex.answer, ex.wrong), ex


def test_eval_prompts_are_not_in_train(data_dir: Path) -> None:
    def user_turns(name: str) -> set[str]:
        rows = read_rows(data_dir / name)
        return {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}

    train_prompts = user_turns("sft_messages.jsonl")
    eval_prompts = user_turns("eval_messages.jsonl")
    assert len(eval_prompts) == N_EVAL and not eval_prompts & train_prompts
    train_pairs = {(r["instruction"], r["input"]) for r in read_rows(data_dir / "sft_alpaca.jsonl")}
    eval_pairs = {(r["instruction"], r["input"]) for r in read_rows(data_dir / "eval_alpaca.jsonl")}
    assert not eval_pairs & train_pairs
    assert {r["prompt"] for r in read_rows(data_dir / "eval_preference.jsonl")} == eval_prompts
    assert {ex.task for ex in held_out_examples(80, 0, train_prompts)} == set(TASKS)


def expected_answer(task: str, prompt: str) -> str:
    """Recompute the answer from the prompt text alone, without the generator's code."""
    numbers = [int(x) for x in re.findall(r"\d+", prompt)]
    word = re.search(r"\n([a-z]+)$", prompt) or re.search(r"(?:word: |Write |What is )([a-z]+)", prompt)
    if task == "add":
        return str(sum(numbers))
    if task == "subtract":
        a, b = numbers[::-1] if re.match(r"Subtract \d+ from", prompt) else numbers
        return str(a - b)
    if task == "sort":
        return " ".join(sorted(re.findall(r"\d", prompt)))
    if task == "reverse":
        return word.group(1)[::-1]
    if task == "uppercase":
        return word.group(1).upper()
    if task == "count":
        return str(len(re.findall(r"[a-z]+", prompt)[-1]))
    if task == "next_letter":
        return chr(ord(re.findall(r"\b[a-z]\b", prompt)[-1]) + 1)
    if task == "convert":
        source = re.search(rf"{numbers[0]} (\w+)", prompt).group(1)
        target = next(u for u in re.findall(r"\b(km|cm|kg|min|m|g|h)\b", prompt) if u != source)
        factor = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("h", "min"): 60}[(source, target)]
        return f"{numbers[0] * factor} {target}"
    raise AssertionError(f"no independent check for task {task}")


def test_every_answer_is_correct() -> None:
    examples = make_examples(1600, 5)
    assert {ex.task for ex in examples} == set(TASKS)
    for ex in examples:
        assert ex.answer == expected_answer(ex.task, ex.prompt), ex
        assert ex.prompt == (f"{ex.instruction}\n{ex.input}" if ex.input else ex.instruction)
    assert all(word != word[::-1] for word in WORDS)


def test_make_examples_task_subset_and_unknown_task() -> None:
    assert {ex.task for ex in make_examples(20, 0, ["add", "sort"])} == {"add", "sort"}
    with pytest.raises(UserError, match="nope"):
        make_examples(5, 0, ["add", "nope"])
    with pytest.raises(UserError, match="--eval"):
        held_out_examples(500, 0, set(), tasks=["next_letter"])


def test_text_corpus_covers_task_vocabulary() -> None:
    docs = text_corpus(400, 0)
    assert len(docs) == 400 and all(doc and "\n" not in doc for doc in docs)
    assert text_corpus(400, 0) == docs != text_corpus(400, 1)
    corpus_words = set(re.findall(r"[A-Za-z]+", " ".join(docs)))
    task_words = {w for ex in make_examples(400, 0) for w in re.findall(r"[A-Za-z]+", ex.prompt + " " + ex.answer)}
    assert task_words <= corpus_words
    assert {form for w in WORDS for form in (w, w[::-1], w.upper())} <= corpus_words


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llmtune", "synth-data", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_cli_writes_files_then_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "data"
    done = run_cli(str(out), "--train", "30", "--eval", "8", "--seed", "2")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(set(KEYS) | {"text.txt"})
    assert len(read_rows(out / "sft_messages.jsonl")) == 30 and len(read_rows(out / "eval_alpaca.jsonl")) == 8
    assert "(30 rows)" in done.stderr and "(8 rows)" in done.stderr

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run_cli(str(out), "--train", "40", "--seed", "3")
    assert refused.returncode == 2
    assert "".join(str(out).split()) in "".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    forced = run_cli(str(out), "--train", "40", "--eval", "8", "--seed", "3", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert len(read_rows(out / "sft_alpaca.jsonl")) == 40
