"""Data formats and loading: every format from every file type to the canonical shape, mixing, bad rows."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from llmtune.data.formats import detect_format
from llmtune.data.load import load_rows, load_splits, read_rows
from llmtune.errors import UserError
from llmtune.schema import DataSource, Recipe

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


# format -> (kind, raw rows (consistent types per column, so every file type can hold them), canonical rows)
CASES = {
    "alpaca": (
        "chat",
        [
            {"instruction": "Add.", "input": "2 3", "output": "5", "system": "Be brief.", "history": [["Hi", "Hello"]]},
            {"instruction": "Say hi.", "input": "", "output": "hi", "system": "", "history": []},
        ],
        [
            {"messages": [SYSTEM, user("Hi"), bot("Hello"), user("Add.\n\n2 3"), bot("5")]},
            {"messages": [user("Say hi."), bot("hi")]},
        ],
    ),
    "sharegpt": (
        "chat",
        [
            {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Bye"},
                               {"from": "bot", "value": "Bye!"}]},
        ],
        [{"messages": [SYSTEM, user("Hi"), bot("Hello"), user("Bye"), bot("Bye!")]}],
    ),
    "messages": (
        "chat",
        [{"messages": [SYSTEM, user("Hi"), bot("Hello")]}, {"messages": [user("Q"), bot("A"), user("Q2"), bot("A2")]}],
        [{"messages": [SYSTEM, user("Hi"), bot("Hello")]}, {"messages": [user("Q"), bot("A"), user("Q2"), bot("A2")]}],
    ),
    "text": ("text", [{"text": "One doc."}, {"text": "Two\nlines."}], [{"text": "One doc."}, {"text": "Two\nlines."}]),
    "preference": (
        "preference",
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
        [{"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]}],
    ),
    "ranked": (
        "preference",
        [{"prompt": "2+2?", "responses": ["5", "4", "22"], "scores": [0.5, 1.0, 0.0]}],
        [
            {"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]},
            {"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("22")]},
        ],
    ),
}  # fmt: skip


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as the file type its suffix names (a directory name without suffix: a `datasets` dir)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()})
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def canonical(ds) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "origin" and v is not None} for row in ds]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ""])
@pytest.mark.parametrize("fmt", list(CASES))
def test_every_format_from_every_file_type_becomes_canonical(tmp_path: Path, fmt: str, suffix: str) -> None:
    kind, raw, expected = CASES[fmt]
    path = write_rows(tmp_path / f"data{suffix}", raw)
    for given in (fmt, None):  # named in the recipe, and detected from the columns
        rows = read_rows([DataSource(path=str(path), format=given)], kind=kind).train
        assert sorted(map(json.dumps, canonical(rows))) == sorted(map(json.dumps, expected))
        assert all(row["origin"].startswith(str(path)) for row in rows)


def test_txt_gives_one_document_per_paragraph_located_by_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("First doc,\nsecond line.\n\n\nSecond doc.\n", encoding="utf-8")
    rows = read_rows([DataSource(path=str(path))], kind="text").train
    assert sorted((r["text"], r["origin"]) for r in rows) == [
        ("First doc,\nsecond line.", f"{path}:1"),
        ("Second doc.", f"{path}:5"),
    ]


def test_builtin_files_load_in_their_detected_formats(tiny_data_dir: Path) -> None:
    expected = {
        "sft_messages.jsonl": ("chat", "messages"),
        "sft_alpaca.jsonl": ("chat", "alpaca"),
        "sft_sharegpt.jsonl": ("chat", "sharegpt"),
        "text.jsonl": ("text", "text"),
        "text.txt": ("text", "text"),
        "preference.jsonl": ("preference", "preference"),
        "preference_chat.jsonl": ("preference", "preference"),
        "ranked.jsonl": ("preference", "ranked"),
    }
    for name, (kind, fmt) in expected.items():
        splits = read_rows([DataSource(path=str(tiny_data_dir / name))], kind=kind)
        assert splits.reports[0].format == fmt, name
        assert splits.reports[0].rows >= 32
    messages = read_rows([DataSource(path=str(tiny_data_dir / "sft_messages.jsonl"))], kind="chat").train
    sharegpt = read_rows([DataSource(path=str(tiny_data_dir / "sft_sharegpt.jsonl"))], kind="chat").train
    assert [r["messages"] for r in messages] == [r["messages"] for r in sharegpt]


def test_detect_format_by_columns() -> None:
    assert detect_format({"messages": [], "answer": "x"}) == "messages"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_format({"prompt": "p", "responses": [], "scores": []}) == "ranked"
    with pytest.raises(ValueError, match=r"cannot tell the format from the columns \(answer, question\)"):
        detect_format({"question": "q", "answer": "a"})


def test_column_mapping_renames_the_files_columns(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    src = DataSource(path=str(path), columns={"instruction": "question", "output": "answer"})
    assert canonical(load_rows([src])) == [{"messages": [user("2+2?"), bot("4")]}]
    wrong = DataSource(path=str(path), format="alpaca", columns={"instruction": "query", "output": "answer"})
    with pytest.raises(UserError, match=rf"{path}:1: missing column 'query' \(mapped to 'instruction'"):
        load_rows([wrong])


def test_implicit_preference_splits_at_the_common_prefix(tmp_path: Path) -> None:
    row = {"chosen": [user("Hi"), bot("Hello"), user("2+2?"), bot("4")], "rejected": [user("Hi"), bot("Hello"),
           user("2+2?"), bot("5")]}  # fmt: skip
    rows = canonical(load_rows([DataSource(path=str(write_rows(tmp_path / "p.jsonl", [row])))], kind="preference"))
    assert rows == [{"prompt": [user("Hi"), bot("Hello"), user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]}]


def source_of(tmp_path: Path, name: str, n: int, **fields) -> DataSource:
    rows = [{"messages": [user(f"{name} {i}"), bot(f"answer {i}")]} for i in range(n)]
    return DataSource(path=str(write_rows(tmp_path / f"{name}.jsonl", rows)), **fields)


def test_mixing_weights_over_and_under_sample(tmp_path: Path) -> None:
    sources = [
        source_of(tmp_path, "a", 10, weight=2.0),
        source_of(tmp_path, "b", 10, weight=0.5),
        source_of(tmp_path, "c", 10, weight=1.5),
    ]
    rows = read_rows(sources, kind="chat", seed=1).train
    per_file = Counter(Path(r["origin"].rsplit(":", 1)[0]).stem for r in rows)
    assert per_file == {"a": 20, "b": 5, "c": 15}
    per_row = Counter(r["origin"] for r in rows)
    assert all(per_row[f"{sources[0].path}:{i}"] == 2 for i in range(1, 11))
    assert len({o for o in per_row if o.startswith(sources[1].path)}) == 5
    assert sorted(per_row[f"{sources[2].path}:{i}"] for i in range(1, 11)) == [1] * 5 + [2] * 5
    again = read_rows(sources, kind="chat", seed=1).train
    assert [r["origin"] for r in again] == [r["origin"] for r in rows]
    other = read_rows(sources, kind="chat", seed=2).train
    assert [r["origin"] for r in other] != [r["origin"] for r in rows]


def test_max_samples_is_a_seeded_subset_taken_before_weighting(tmp_path: Path) -> None:
    src = source_of(tmp_path, "a", 10, max_samples=4, weight=2.0)
    rows = read_rows([src], kind="chat", seed=3).train
    per_row = Counter(r["origin"] for r in rows)
    assert len(per_row) == 4 and set(per_row.values()) == {2}
    assert per_row == Counter(r["origin"] for r in read_rows([src], kind="chat", seed=3).train)


def test_eval_ratio_holds_out_disjoint_rows(tmp_path: Path) -> None:
    recipe = Recipe.model_validate(
        {
            "stage": "sft",
            "model": {"name_or_path": "unused"},
            "data": {"train": [source_of(tmp_path, "a", 20).model_dump()], "eval_ratio": 0.25},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    train, held = load_splits(recipe)
    assert (len(train), len(held)) == (15, 5)
    assert not set(train["origin"]) & set(held["origin"])
    assert len(set(train["origin"]) | set(held["origin"])) == 20


def test_ranked_pairs_of_one_row_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c"], "scores": [3, 2, 1]} for i in range(10)]
    src = DataSource(path=str(write_rows(tmp_path / "r.jsonl", rows)))
    splits = read_rows([src], kind="preference", eval_ratio=0.3)
    assert (len(splits.train), len(splits.eval)) == (14, 6)
    assert not {r["origin"] for r in splits.train} & {r["origin"] for r in splits.eval}


BAD_ROWS = [
    ("messages", '{"messages": [{"role": "user", "content": "hi"}, ', "not valid JSON"),
    ("alpaca", {"instruction": "Add.", "input": "2 3"}, "missing column 'output'"),
    ("messages", {"messages": [user("Hi"), {"role": "bot", "content": "x"}]},
     "message 2 has unknown role 'bot' (allowed: system, developer, user, assistant)"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]},
     "unknown role 'robot' (allowed: system, human, user, gpt, assistant, bot, model)"),
    ("messages", {"messages": [user("Hi"), bot("  ")]}, "assistant turn 1 is empty"),
    ("messages", {"messages": [user("Hi"), user("Hi again"), bot("x")]},
     "roles do not alternate: message 2 is 'user', expected 'assistant'"),
    ("messages", {"messages": [user("Hi"), bot("x"), SYSTEM, user("Q"), bot("A")]},
     "a system message may only come first: message 3"),
    ("messages", {"messages": [user("Hi"), bot("x"), user("more?")]}, "ends with a 'user' message"),
    ("messages", {"messages": [user("Hi"), {"role": "assistant", "content": 3}]},
     "content of message 2 (assistant) is not a string (got int)"),
    ("text", {"text": ""}, "text is empty"),
    ("preference", {"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same"),
    ("ranked", {"prompt": "p", "responses": ["a", "b"], "scores": [1, 1]}, "all responses have the same score"),
    ("ranked", {"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "2 responses but 1 scores"),
    ("alpaca", ["not", "an", "object"], "a row must be an object with named fields, not list"),
]  # fmt: skip


def _kind(fmt: str) -> str:
    return {"text": "text", "preference": "preference", "ranked": "preference"}.get(fmt, "chat")


def _file_with_bad_second_row(tmp_path: Path, fmt: str, bad) -> Path:
    good = {
        "messages": {"messages": [user("Hi"), bot("Hello")]},
        "alpaca": {"instruction": "Say hi.", "output": "hi"},
        "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        "text": {"text": "A doc."},
        "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "ranked": {"prompt": "p", "responses": ["a", "b"], "scores": [1, 0]},
    }[fmt]
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(good), bad if isinstance(bad, str) else json.dumps(bad), json.dumps(good)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("fmt", "bad", "reason"), BAD_ROWS)
def test_each_bad_row_gets_a_message_naming_file_and_row(tmp_path: Path, fmt: str, bad, reason: str) -> None:
    path = _file_with_bad_second_row(tmp_path, fmt, bad)
    with pytest.raises(UserError) as caught:
        read_rows([DataSource(path=str(path), format=fmt)], kind=_kind(fmt))
    assert str(caught.value).startswith(f"{path}:2: ")
    assert reason in str(caught.value)
    assert "data.bad_rows: skip" in str(caught.value)


@pytest.mark.parametrize(("fmt", "bad", "reason"), BAD_ROWS[:6])
def test_bad_rows_skip_counts_and_reports_them(tmp_path: Path, capsys, fmt: str, bad, reason: str) -> None:
    path = _file_with_bad_second_row(tmp_path, fmt, bad)
    splits = read_rows([DataSource(path=str(path), format=fmt)], kind=_kind(fmt), bad_rows="skip")
    assert (splits.skipped, len(splits.train)) == (1, 2)
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}: skipped 1 of 3 rows" in err and reason.split(" (")[0] in err


def test_csv_row_with_extra_cells_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text\n"fine"\n"one","two"\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:3: more cells than the 1 columns"):
        read_rows([DataSource(path=str(path))], kind="text")


def test_empty_missing_and_all_bad_files_are_user_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty.jsonl: no rows"):
        read_rows([DataSource(path=str(empty))], kind="chat")
    with pytest.raises(UserError, match="data file nope/missing.jsonl not found"):
        read_rows([DataSource(path="nope/missing.jsonl")], kind="chat")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n{"text": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"none of its 2 rows is valid; first problems: .*bad.jsonl:1: text is empty"):
        read_rows([DataSource(path=str(bad))], kind="text", bad_rows="skip")


def test_stage_decides_which_formats_fit(tmp_path: Path) -> None:
    chat = source_of(tmp_path, "a", 2)
    with pytest.raises(UserError, match=r"is in format 'messages' \(chat rows\), but this stage trains on text rows"):
        read_rows([chat], kind="text")
    text = DataSource(path=str(write_rows(tmp_path / "t.jsonl", [{"text": "doc"}])))
    mixed = read_rows([chat, text], kind="chat").train
    assert sorted(k for r in mixed for k in r if k != "origin") == ["messages", "messages", "text"]


def test_system_prompt_is_added_where_missing(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "m.jsonl", [{"messages": [user("Hi"), bot("Yo")]}, {"messages": [SYSTEM, user("Q"), bot("A")]}]
    )
    rows = canonical(load_rows([DataSource(path=str(path))], system_prompt="Be kind."))
    firsts = sorted(r["messages"][0]["content"] for r in rows)
    assert firsts == ["Be brief.", "Be kind."]


def test_a_folder_of_data_files_is_read_by_split_like_a_hub_snapshot(tmp_path: Path) -> None:
    snapshot = tmp_path / "owner--name"
    (snapshot / "data").mkdir(parents=True)
    write_rows(snapshot / "data" / "train.jsonl", [{"text": "a"}, {"text": "b"}])
    write_rows(snapshot / "data" / "test.jsonl", [{"text": "c"}])
    (snapshot / "README.md").write_text("# a dataset\n", encoding="utf-8")
    train = read_rows([DataSource(path=str(snapshot))], kind="text").train
    assert sorted((r["text"], r["origin"]) for r in train) == [
        ("a", f"{snapshot}/data/train.jsonl:1"),
        ("b", f"{snapshot}/data/train.jsonl:2"),
    ]
    test = read_rows([DataSource(path=str(snapshot), split="test")], kind="text").train
    assert [r["text"] for r in test] == ["c"]
    with pytest.raises(UserError, match=r"no split 'validation' \(splits: train, test\)"):
        read_rows([DataSource(path=str(snapshot), split="validation")], kind="text")


def test_a_saved_dataset_dict_is_read_by_split(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "saved"
    splits = {"train": [{"text": "a"}], "validation": [{"text": "v"}]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    rows = read_rows([DataSource(path=str(path), split="validation")], kind="text").train
    assert [(r["text"], r["origin"]) for r in rows] == [("v", f"{path}: row 1")]


WRONG_FORMATS = [  # (file, the format: set by mistake, the format its columns say, the stage's kind of rows)
    ("sft_alpaca.jsonl", "messages", "alpaca", "chat"),
    ("sft_alpaca.jsonl", "sharegpt", "alpaca", "chat"),
    ("sft_messages.jsonl", "alpaca", "messages", "chat"),
    ("sft_sharegpt.jsonl", "messages", "sharegpt", "chat"),
    ("text.jsonl", "alpaca", "text", "chat"),
    ("preference.jsonl", "ranked", "preference", "preference"),
    ("ranked.jsonl", "preference", "ranked", "preference"),
    ("preference.jsonl", "messages", "preference", "chat"),
]


@pytest.mark.parametrize(("name", "wrong", "right", "kind"), WRONG_FORMATS)
def test_a_wrong_format_names_the_one_the_columns_match(tiny_data_dir: Path, name, wrong, right, kind) -> None:
    source = DataSource(path=str(tiny_data_dir / name), format=wrong)
    with pytest.raises(UserError) as caught:
        read_rows([source], kind=kind)
    message = str(caught.value)
    assert f"look like {right}, not {wrong}; set format: {right} on this source" in message
    assert "bad_rows" not in message, "skipping rows cannot fix a wrong format"
    with pytest.raises(UserError) as skipped:  # skipping them all ends in the same advice
        read_rows([source], kind=kind, bad_rows="skip")
    assert "none of its 32 rows is valid; these columns" in str(skipped.value)
    assert f"set format: {right} on this source" in str(skipped.value)
    if right == "preference" and kind == "chat":
        assert "preference rows are preference: this stage trains on chat rows" in message
    fixed = read_rows([DataSource(path=source.path, format=right)], kind=_kind(right))
    assert len(fixed.train) >= 32
