"""llmtune clean: planted duplicates are found, languages and rules drop what they should, outputs keep their format,
the report adds up, and bad input exits 2 naming the place. Real libraries (datatrove, datasketch, py3langid)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from bench.cleandata import OBJECTS, SUBJECTS, VERBS, chat_row, document, planted_texts
from tests.cli_runner import run_main


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def report(out: Path) -> dict:
    return json.loads((out / "clean_report.json").read_text(encoding="utf-8"))


def test_planted_exact_and_near_duplicates_are_dropped_and_the_rest_kept(tmp_path, capsys):
    texts, exact, near = planted_texts(120, seed=3)
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    code, out, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"))
    assert code == 0, err
    kept = [r["text"] for r in read_jsonl(tmp_path / "out" / "docs.jsonl")]
    expected = [t for i, t in enumerate(texts) if i not in exact | near]
    assert kept == expected  # the originals kept, in order; every planted copy dropped
    data = report(tmp_path / "out")
    steps = {s["step"]: s for s in data["steps"]}
    assert steps["rules"]["dropped"] == 0
    assert steps["exact"]["dropped"] == len(exact) and steps["near"]["dropped"] == len(near)
    assert data["largest_clusters"]["exact"][0]["duplicates"] >= 1
    assert "near" in out and "exact" in out


def test_a_mixed_language_file_keeps_only_the_asked_languages(tmp_path, capsys):
    rows = [
        chat_row("What is the weather like today in the city?", "It is sunny and warm, a good day for a walk."),
        chat_row("今天天气怎么样？我们可以去公园吗？", "今天天气很好，阳光明媚，非常适合去公园散步。"),
        chat_row("Quelle heure est-il maintenant à Paris ?", "Il est trois heures de l'après-midi à Paris."),
        chat_row("Wie spät ist es jetzt in Berlin bitte?", "Es ist jetzt drei Uhr am Nachmittag in Berlin."),
        chat_row("Can you name three colours of the rainbow?", "Red, orange and yellow are three of them."),
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"), "--lang", "en,zh")
    assert code == 0, err
    assert read_jsonl(tmp_path / "out" / "chat.jsonl") == [rows[0], rows[1], rows[4]]
    reasons = report(tmp_path / "out")["steps"][0]["reasons"]
    assert reasons == {"language fr": 1, "language de": 1}


RULE_CASES = {
    "too short for a document": ("Short line of text here.", "fewer than 50 words"),
    "symbols": (document(random.Random(1)) + " #### $$$$ %%%% &&&& @@@@ " * 20, "symbol ratio"),
    "digits": (document(random.Random(1)) + " 1234567890" * 60, "digit ratio"),
    "repeated word": ("buy " * 80 + document(random.Random(1), 2), "word 'buy' repeated"),
    "no stop words": (
        " ".join(w for w in " ".join(SUBJECTS + VERBS + OBJECTS).split() if w.lower() not in ("the", "of", "and")),
        "stop words",
    ),
    "repeated lines (gopher)": ("\n".join([document(random.Random(2), 2)] * 6), "gopher repetition"),
    "lorem ipsum (c4)": ("Lorem ipsum dolor sit amet. " + document(random.Random(1)), "c4: lorem_ipsum"),
    "code braces (c4)": (document(random.Random(1)) + "\nfunction f() { return 1; }", "c4: curly_bracket"),
    "user pattern": (document(random.Random(1)) + " Visit http://spam.example now.", "matches"),
    "user word": (document(random.Random(1)) + " This is a casino advert.", "contains 'casino'"),
}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_each_rule_drops_its_row_and_keeps_a_normal_one(case):
    from llmtune.data.clean.rules import RuleStep
    from llmtune.data.clean.spec import RulesSpec

    step = RuleStep(RulesSpec(drop_patterns=[r"https?://"], drop_words=["Casino"]), "text")
    assert step.check(document(random.Random(7))) is None
    text, reason = RULE_CASES[case]
    assert reason in (step.check(text) or "kept")


def test_chat_rows_get_lenient_defaults_but_the_same_rules_can_be_asked_for():
    from llmtune.data.clean.rules import RuleStep
    from llmtune.data.clean.spec import RulesSpec

    turn = "What is two plus two?\nFour."
    assert RuleStep(RulesSpec(), "chat").check(turn) is None  # Gopher's 50 words are for web documents
    assert "fewer than 8 words" in RuleStep(RulesSpec(min_words=8), "chat").check(turn)


def test_formats_are_kept_per_file_and_the_run_is_deterministic(tmp_path, capsys, tiny_data_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, _, _ = planted_texts(30, seed=5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "docs.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    with (inputs / "alpaca.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        for i in range(6):
            writer.writerow({"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)})
        writer.writerow({"instruction": "Add 0 and 1.", "input": "", "output": "1"})
    pairs = json.loads(
        json.dumps([json.loads(x) for x in (tiny_data_dir / "preference.jsonl").read_text().splitlines()])
    )
    (inputs / "pairs.json").write_text(json.dumps(pairs[:10] + pairs[:2]), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"prompt": f"Say the word number {i}."} for i in range(5)] * 2),
                   inputs / "prompts.parquet")  # fmt: skip
    files = sorted(str(p) for p in inputs.iterdir())
    for out in ("a", "b"):
        code, _, err = run_main(capsys, "clean", *files, "--out", str(tmp_path / out))
        assert code == 0, err
    for name in ("alpaca.csv", "docs.txt", "pairs.json", "prompts.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert len(list(csv.DictReader((tmp_path / "a" / "alpaca.csv").open()))) == 6
    assert json.loads((tmp_path / "a" / "pairs.json").read_text()) == pairs[:10]
    assert pq.read_table(tmp_path / "a" / "prompts.parquet").to_pylist() == [{"prompt": f"Say the word number {i}."}
                                                                             for i in range(5)]  # fmt: skip
    assert (tmp_path / "a" / "docs.txt").read_text().split("\n\n")[0] == texts[0]
    data = report(tmp_path / "a")
    kinds = {Path(f["path"]).name: f["kind"] for f in data["files"]}
    assert kinds == {"alpaca.csv": "chat", "docs.txt": "text", "pairs.json": "preference", "prompts.parquet": "prompt"}
    # the counts add up: per step in - dropped = out = next step's in; per file and overall
    for f in data["files"]:
        counts = list(f["steps"].values())
        assert counts[0]["in"] == f["rows_in"] and counts[-1]["out"] == f["rows_out"]
        assert all(a["out"] == b["in"] for a, b in zip(counts, counts[1:], strict=False))
    assert data["rows_in"] - sum(s["dropped"] for s in data["steps"]) == data["rows_out"]
    assert data["rows_out"] == sum(f["rows_out"] for f in data["files"])
    # a step dropping more than half of a file says so (prompts.parquet: 5 of 10 rows are exact copies)
    assert data["warnings"] == []  # exactly half is not more than half
    code, _, err = run_main(capsys, "clean", str(inputs / "prompts.parquet"), "--out", str(tmp_path / "c"),
                            "--set", "clean.warn_drop_fraction=0.4")  # fmt: skip
    assert code == 0 and "WARNING" in err and "step exact dropped 5 of 10" in err


def test_the_perplexity_filter_keeps_the_best_fraction(tmp_path, capsys, tiny_model_dir):
    rows = [{"text": document(random.Random(i), 3)} for i in range(6)]
    rows += [{"text": "qzx vvk jjw " * 12 + "ok"} for _ in range(2)]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"), "--no-rules", "--no-dedup",
                            "--perplexity-model", str(tiny_model_dir), "--keep-fraction", "0.5")  # fmt: skip
    assert code == 0, err
    data = report(tmp_path / "out")
    assert data["steps"][-1] == {**data["steps"][-1], "step": "perplexity", "in": 8, "dropped": 4, "out": 4}
    assert len(read_jsonl(tmp_path / "out" / "docs.jsonl")) == 4


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"text": "fine"}\n{"text": broken\n', [], "bad.jsonl:2: not valid JSON"),
        ('{"text": "fine"}\n{"messages": [{"role": "user", "content": "hi"}]}\n', [], "bad.jsonl:2"),
        ('{"text": "fine"}\n', ["--set", "clean.near.threshold=1.5"], "clean.near.threshold"),
        ('{"text": "fine"}\n', ["--set", "clean.rules.min_wrds=3"], "did you mean 'min_words'"),
        ('{"text": "fine"}\n', ["--set", "clean.rules.drop_patterns=['(']"], "clean.rules.drop_patterns.0"),
        ('{"text": "fine"}\n', ["--lang", "en,xx"], "unknown language code(s) xx"),
    ],
)
def test_bad_rows_and_bad_settings_exit_2_naming_the_place(tmp_path, capsys, content, args, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content, encoding="utf-8")
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_recipe_file_sets_the_clean_section_and_names_its_line(tmp_path, capsys):
    texts, _, _ = planted_texts(12, seed=1)
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    recipe = tmp_path / "clean.yaml"
    recipe.write_text("clean:\n  near:\n    enabled: false\n  rules:\n    min_words: 200\n", encoding="utf-8")
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"), "--recipe", str(recipe))
    assert code == 0, err
    assert [s["step"] for s in report(tmp_path / "out")["steps"]] == ["rules", "exact"]
    assert report(tmp_path / "out")["rows_out"] == 0  # 100-word documents under a 200-word minimum
    recipe.write_text("clean:\n  near:\n    treshold: 0.5\n", encoding="utf-8")
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "o2"), "--recipe", str(recipe))
    assert code == 2 and "clean.yaml:3" in err and "did you mean 'threshold'" in err


def test_batched_signatures_are_datasketchs_minhash():
    from datasketch import MinHash

    from llmtune.data.clean.minhash import shingle_hashes, signatures, word_hashes

    rows = [word_hashes(t) for t in ("The old farmer carried the wooden fence home.", "Short one", "", "a b c d e")]
    for ngram, perms in ((2, 256), (5, 128)):
        hashes, starts = shingle_hashes(rows, ngram)
        ends = [*starts[1:].tolist(), len(hashes)]
        for row, sig in enumerate(signatures(rows, ngram, perms, seed=1)):
            reference = MinHash(num_perm=perms, seed=1, scheme="affine32", hashfunc=int)
            reference.update_batch(hashes[starts[row] : ends[row]].tolist())
            assert (reference.hashvalues == sig).all()


def test_the_hash_table_finds_what_was_inserted_across_growth():
    import numpy as np

    from llmtune.data.clean.minhash import HashTable

    rng = np.random.default_rng(0)
    for dtype in (np.uint32, np.uint64):
        table, model = HashTable(dtype, capacity=16), {}
        for _ in range(30):
            queries = rng.integers(0, 3000, size=100).astype(np.uint64)
            at, values = table.find(queries)
            expected = sorted((i, v) for i, q in enumerate(queries.tolist()) for v in model.get(q or 1, []))
            assert sorted(zip(at.tolist(), values.tolist(), strict=True)) == expected
            keys = rng.integers(0, 3000, size=int(rng.integers(1, 200))).astype(np.uint64)
            values = rng.integers(0, 2**32, size=len(keys)).astype(np.uint32)
            table.insert(keys, values)
            for k, v in zip(keys.tolist(), values.tolist(), strict=True):
                model.setdefault(k or 1, []).append(v)


def test_a_short_chat_rows_one_word_copy_goes_at_the_defaults_and_its_template_mates_stay(tmp_path, capsys):
    rows = [
        chat_row("What did the old farmer do with the ka12 lo34 mi56 nu78?",
                 "The river pilot ordered the ka12 lo34 mi56 nu78 as the sun rose over the hills."),
        chat_row("What did the old farmer do with the pe11 ro22 sa33 ti44?",  # same template, other nouns (J ~0.6)
                 "The river pilot ordered the pe11 ro22 sa33 ti44 as the sun rose over the hills."),
        chat_row("What is the capital of Kalo?", "The capital of Kalo is Mivu."),
        chat_row("What did the old farmer do with the ka12 lo34 mi56 nu78?",  # one word changed (J ~0.82)
                 "The river pilot ordered the ka12 lo34 mi56 nu78 as the sun rose over the mountains."),
        chat_row("What is the capital of Tize?", "The capital of Tize is Nuro."),
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert read_jsonl(tmp_path / "out" / "chat.jsonl") == [rows[0], rows[1], rows[2], rows[4]]
    near = report(tmp_path / "out")["steps"][-1]
    assert (
        near["dropped"] == 1
        and "near duplicate of" in near["examples"][0]["reason"]
        and ":1 " in near["examples"][0]["reason"]
    )


def executor_inputs(tmp_path: Path) -> list[str]:
    """Planted documents in three files (copies across files) and planted short chat rows in a fourth."""
    from bench.cleandata import planted_short_rows

    texts, _, _ = planted_texts(90, seed=3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        write_jsonl(inputs / f"docs{i}.jsonl", [{"text": t} for t in texts[i * 30 : (i + 1) * 30]])
    rows, _ = planted_short_rows(200, seed=4)
    write_jsonl(inputs / "chat.jsonl", rows + rows[:3])  # exact copies too
    return sorted(str(p) for p in inputs.iterdir())


def test_the_local_executor_path_drops_the_same_rows_as_the_default_path(tmp_path, capsys):
    files = executor_inputs(tmp_path)
    code, _, err = run_main(capsys, "clean", *files, "--out", str(tmp_path / "default"))
    assert code == 0, err
    code, out, err = run_main(capsys, "clean", *files, "--out", str(tmp_path / "local"), "--set",
                              "clean.executor.kind=local", "--set", "clean.executor.tasks=3")  # fmt: skip
    assert code == 0, err
    for name in map(lambda f: Path(f).name, files):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    default, local = report(tmp_path / "default"), report(tmp_path / "local")
    assert [s["dropped"] for s in local["steps"]] == [s["dropped"] for s in default["steps"]]
    assert all(s["dropped"] for s in default["steps"][1:])  # exact and near both had work
    assert [f["steps"] for f in local["files"]] == [f["steps"] for f in default["files"]]
    assert local["largest_clusters"]["near"] == default["largest_clusters"]["near"]
    assert local["steps"][2]["examples"] == default["steps"][2]["examples"]  # near reasons name the kept row
    # exact: the same clusters, but datatrove does not say which rows were copies of which
    assert [c["kept"] for c in local["largest_clusters"]["exact"]] == [
        c["kept"] for c in default["largest_clusters"]["exact"]
    ]
    assert {e["reason"] for e in local["steps"][1]["examples"]} == {"duplicate"}
    assert "rows in" in out and sorted(p.name for p in (tmp_path / "local.datatrove").iterdir()) == ["logs"]


def test_slurm_and_ray_settings_build_their_executors(tmp_path):
    from datatrove.executor import RayPipelineExecutor, SlurmPipelineExecutor

    from llmtune.data.clean.executors import Finish, executors, stages
    from llmtune.data.clean.spec import CleanSpec

    files = [Path(f) for f in executor_inputs(tmp_path)]
    kinds = ["chat", "text", "text", "text"]
    slurm = CleanSpec(executor={"kind": "slurm", "tasks": 4, "partition": "cpu", "time": "1-02:00:00",
                                "sbatch_args": {"account": "lab"}})  # fmt: skip
    finish = Finish(files, [], kinds, tmp_path / "out", tmp_path / "staging", tmp_path / "work", slurm)
    plan = stages(files, kinds, slurm, tmp_path / "work", tmp_path / "staging", finish)
    built = executors(plan, slurm, tmp_path / "logs")
    assert all(isinstance(e, SlurmPipelineExecutor) for e in built)
    assert [e.depends for e in built[1:]] == built[:-1]
    assert [e.job_name for e in built][:3] == [
        "llmtune-clean-filter",
        "llmtune-clean-exact1-chat",
        "llmtune-clean-exact2-chat",
    ]
    assert [(e.tasks, e.partition, e.time) for e in built[:2]] == [(4, "cpu", "1-02:00:00")] * 2
    assert built[0].get_sbatch_args()["account"] == "lab"
    buckets = next(e for e in built if e.job_name.endswith("near2-text"))
    assert buckets.tasks == buckets.pipeline[0].config.num_buckets == 18  # a task a band
    ray = CleanSpec(executor={"kind": "ray", "tasks": 2, "cpus_per_task": 2, "time": "00:30:00"})
    built = executors(stages(files, kinds, ray, tmp_path / "w2", tmp_path / "s2", finish), ray, tmp_path / "l2")
    assert all(isinstance(e, RayPipelineExecutor) for e in built)
    assert (built[0].tasks, built[0].cpus_per_task, built[0].time) == (2, 2, 1800)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["clean.executor.kind=dask"], "clean.executor.kind"),
        (["clean.executor.kind=slurm", "clean.executor.time=02:00:00"], "clean.executor.partition: needed"),
        (
            ["clean.executor.kind=slurm", "clean.executor.partition=cpu", "clean.executor.time=2h"],
            "clean.executor.time",
        ),
        (["clean.executor.kind=slurm", "clean.executor.partition=cpu", "clean.executor.time=02:00:00"], "`sbatch`"),
        (["clean.executor.kind=ray"], "pip install 'llmtune[ray]'"),
        (["clean.executor.kind=local", "clean.executor.tasks=0"], "clean.executor.tasks"),
        (
            ["clean.executor.kind=local", "clean.perplexity.model=x", "clean.perplexity.keep_fraction=0.5"],
            "clean.executor.kind: the perplexity step",
        ),
    ],
)
def test_bad_executor_settings_exit_2_naming_the_key(tmp_path, capsys, monkeypatch, settings, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": "fine"}])
    code, _, err = run_main(capsys, "clean", str(src), "--out", str(tmp_path / "out"),
                            *[a for s in settings for a in ("--set", s)])  # fmt: skip
    assert code == 2 and message in err and err.count("\n") <= 3, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.datatrove").exists()
