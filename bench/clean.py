"""`llmtune clean` throughput and memory on short chat rows (100k by default; 1M with --full), each size in its own
`llmtune clean` process (rows/s, peak RSS), and near-duplicate precision and recall at the default settings on two
planted sets: ~100-word documents with copies one or two words apart, and short chat rows with one-word copies among
genuinely different rows of the same templates.

Short rows: a user question and an assistant answer of about 25 words in all; 10% are planted exact copies
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

from bench.cleandata import chat_row, document, near_copy, planted_short_rows, short_pair
from bench.common import ROOT, WORK, emit, load_average, result_row


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
            rows.append(chat_row(*short_pair(rng)))
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def run_clean(data: Path, out: Path, *extra: str) -> tuple[float, float, float]:
    """Seconds, peak RSS (MiB) and CPU seconds (user + system: less swayed by a loaded machine) of one
    `llmtune clean` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llmtune", "-q", "clean", str(data), "--out", str(out), "--overwrite",
                    *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, after.ru_maxrss / 1024, cpu  # sizes run smallest first, so the peak is this run's


def planted_documents(n: int) -> tuple[list[dict], set[int]]:
    """n ~100-word documents; every 8th is a copy of an earlier one with one word changed (every 16th: two)."""
    rng = random.Random(11)
    texts, planted = [], set()
    for i in range(n):
        if i > 10 and i % 8 == 0:
            source = texts[rng.randrange(i - 1)]
            texts.append(near_copy(near_copy(source, rng), rng) if i % 16 == 0 else near_copy(source, rng))
            planted.add(i)
        else:
            texts.append(document(rng))
    return [{"text": t} for t in texts], planted


def precision_recall(rows: list[dict], planted: set[int], name: str, root: Path) -> tuple[float, float, int, int]:
    """Near-duplicate precision and recall of the default settings (exact step and rules off) on a planted set."""
    data = write(root / f"{name}.jsonl", rows)
    out = root / f"{name}-out"
    run_clean(data, out, "--no-rules", "--set", "clean.exact.enabled=false")
    report = json.loads((out / "clean_report.json").read_text())
    kept = [json.loads(line) for line in (out / data.name).read_text().splitlines()]
    dropped, at = set(), 0
    for i, row in enumerate(rows):  # the output keeps the input's order
        if at < len(kept) and kept[at] == row:
            at += 1
        else:
            dropped.add(i)
    assert len(dropped) == report["steps"][0]["dropped"]
    hits = len(dropped & planted)
    return hits / max(1, len(dropped)), hits / len(planted), len(dropped), len(planted)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune clean: rows/s, peak RSS, near-duplicate precision/recall")
    p.add_argument("--rows", type=int, nargs="+", default=[100_000])
    p.add_argument("--full", action="store_true", help="also 1M rows (a few minutes on 2 cores)")
    p.add_argument("--planted", type=int, default=4000, help="rows in each precision/recall set")
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
        seconds, rss, cpu = run_clean(data, root / f"out-{n}")
        report = json.loads((root / f"out-{n}" / "clean_report.json").read_text())
        steps = ", ".join(f"{s['step']} -{s['dropped']:,}" for s in report["steps"])
        print(f"  {seconds:.1f} s ({cpu:.1f} CPU s), {n / seconds:,.0f} rows/s ({n / cpu:,.0f} a CPU second), peak "
              f"RSS {rss:,.0f} MiB; {steps}", flush=True)  # fmt: skip
        rows.append(result_row(f"clean {n // 1000}k short rows: rows/s", n / seconds, "(info)", None,
                               f"{seconds:.1f} s, {cpu:.1f} CPU s; {steps}"))  # fmt: skip
        rows.append(result_row(f"clean {n // 1000}k short rows: peak RSS (MiB)", rss, "(info)", None))
    sets = {"documents": planted_documents(args.planted), "short rows": planted_short_rows(args.planted)}
    for name, (data, planted) in sets.items():
        precision, recall, dropped, n_planted = precision_recall(data, planted, name.replace(" ", "-"), root)
        print(f"near duplicates, {args.planted:,} {name}: {n_planted} planted, {dropped} dropped; precision "
              f"{precision:.3f}, recall {recall:.3f}", flush=True)  # fmt: skip
        rows.append(result_row(f"clean near-duplicate precision ({name})", precision, ">= 0.99", precision >= 0.99))
        rows.append(result_row(f"clean near-duplicate recall ({name})", recall, ">= 0.97", recall >= 0.97,
                               "1 or 2 words changed in ~100 words" if name == "documents" else
                               "1 word changed in ~25; 3 other templates"))  # fmt: skip
    emit("clean", rows)


if __name__ == "__main__":
    main()
