"""`llmtune clean` throughput and memory on short chat rows (100k by default; 1M with --full), each size in its own
`llmtune clean` process (rows/s, peak RSS), and near-duplicate precision and recall on a planted set of documents.

Short rows: a user question and an assistant answer of about 20 words in all; 10% are planted exact copies
(case and spacing changed) and 5% near copies (one word changed), so every step has work to do.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.cleandata import SUBJECTS, TAILS, VERBS, chat_row, document, near_copy
from bench.common import ROOT, WORK, emit, load_average, result_row

NOUNS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "sa", "ti", "vu", "ze") for b in range(100)]


def short_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        if i > 20 and i % 10 == 0:
            q, a = (m["content"] for m in rows[rng.randrange(i - 1)]["messages"])
            rows.append(chat_row(q.upper(), "  " + a))
        elif i > 20 and i % 20 == 5:
            q, a = (m["content"] for m in rows[rng.randrange(i - 1)]["messages"])
            rows.append(chat_row(q, near_copy(a, rng)))
        else:
            words = " ".join(rng.choice(NOUNS) for _ in range(4))
            q = f"What did {rng.choice(SUBJECTS).lower()} do with the {words}?"
            a = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the {words} {rng.choice(TAILS)}."
            rows.append(chat_row(q, a))
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def run_clean(data: Path, out: Path, *extra: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one `llmtune clean` process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmtune", "-q", "clean", str(data), "--out", str(out), "--overwrite",
                    *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # sizes run smallest first


def precision_recall(n: int, root: Path) -> tuple[float, float, int, int]:
    """Near-duplicate precision and recall (exact step off, rules off) on n documents with planted near copies."""
    rng = random.Random(11)
    texts, planted = [], set()
    for i in range(n):
        if i > 10 and i % 8 == 0:
            source = texts[rng.randrange(i - 1)]
            texts.append(near_copy(near_copy(source, rng), rng) if i % 16 == 0 else near_copy(source, rng))
            planted.add(i)
        else:
            texts.append(document(rng))
    data = write(root / "planted.jsonl", [{"text": t} for t in texts])
    run_clean(data, root / "planted-out", "--no-rules", "--set", "clean.exact.enabled=false")
    report = json.loads((root / "planted-out" / "clean_report.json").read_text())
    kept = [json.loads(line)["text"] for line in (root / "planted-out" / "planted.jsonl").read_text().splitlines()]
    dropped, at = set(), 0
    for i, text in enumerate(texts):  # the output keeps the input's order
        if at < len(kept) and kept[at] == text:
            at += 1
        else:
            dropped.add(i)
    assert len(dropped) == report["steps"][0]["dropped"]
    hits = len(dropped & planted)
    return hits / max(1, len(dropped)), hits / len(planted), len(dropped), len(planted)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune clean: rows/s, peak RSS, near-duplicate precision/recall")
    p.add_argument("--rows", type=int, nargs="+", default=[100_000])
    p.add_argument("--full", action="store_true", help="also 1M rows (about 10 minutes on 2 cores)")
    p.add_argument("--planted", type=int, default=4000, help="documents in the precision/recall set")
    args = p.parse_args(argv)
    sizes = sorted(set(args.rows + ([1_000_000] if args.full else [])))
    root = WORK / "runs" / "clean"
    rows = []
    for n in sizes:
        data = root / f"short-{n}.jsonl"
        if not data.is_file():
            write(data, short_rows(n, seed=1))
        print(
            f"clean: {n:,} short chat rows ({data.stat().st_size / 2**20:.0f} MiB); load {load_average()}", flush=True
        )
        seconds, rss = run_clean(data, root / f"out-{n}")
        report = json.loads((root / f"out-{n}" / "clean_report.json").read_text())
        steps = ", ".join(f"{s['step']} -{s['dropped']:,}" for s in report["steps"])
        print(f"  {seconds:.1f} s, {n / seconds:,.0f} rows/s, peak RSS {rss:,.0f} MiB; {steps}", flush=True)
        rows.append(result_row(f"clean {n // 1000}k short rows: rows/s", n / seconds, "(info)", None,
                               f"{seconds:.1f} s; {steps}"))  # fmt: skip
        rows.append(result_row(f"clean {n // 1000}k short rows: peak RSS (MiB)", rss, "(info)", None))
    precision, recall, dropped, planted = precision_recall(args.planted, root)
    print(f"near duplicates on {args.planted:,} documents: {planted} planted, {dropped} dropped; precision "
          f"{precision:.3f}, recall {recall:.3f}", flush=True)  # fmt: skip
    rows.append(result_row("clean near-duplicate precision (planted set)", precision, ">= 0.95", precision >= 0.95))
    rows.append(result_row("clean near-duplicate recall (planted set)", recall, ">= 0.9", recall >= 0.9,
                           "1 or 2 words changed in ~100-word documents"))  # fmt: skip
    emit("clean", rows)


if __name__ == "__main__":
    main()
