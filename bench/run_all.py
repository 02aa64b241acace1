"""`make bench`: every CPU benchmark in sequence, each in its own process, then one table of ratios against goals.

The results are also written to .cache/bench/results.json. bench/gpu.py is not run here (it needs a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from typing import Any

from bench.common import RESULT_TAG, ROOT, WORK, emit, load_average, result_row

# (name, module, arguments): the defaults keep the whole run near 10 minutes on an idle 2-core machine.
SUITE: list[tuple[str, str, list[str]]] = [
    ("cli_start", "bench.run_all", ["--cli-start"]),
    ("sft_overhead", "bench.sft_overhead", []),
    ("packing", "bench.packing", []),
    ("tokenize_cache", "bench.tokenize_cache", []),
    ("clean", "bench.clean", []),
    ("grpo_overhead", "bench.grpo_overhead", []),
    ("real_model", "bench.real_model", ["--quick", "--threads", "1"]),
    ("dpo_real", "bench.dpo_real", ["--quick", "--threads", "1"]),
]
QUICK: dict[str, list[str]] = {
    "sft_overhead": ["--models", "tiny", "--repeats", "1", "--steps", "8"],
    "packing": ["--model", "tiny", "--rows", "64", "--repeats", "1"],
    "tokenize_cache": ["--rows", "2000", "--repeats", "1"],
    "clean": ["--rows", "2000", "--planted", "400"],
    "grpo_overhead": ["--repeats", "1", "--steps", "6"],
    "real_model": ["--variants", "llmtune"],
    "dpo_real": ["--variants", "llmtune"],
}


def cli_start() -> None:
    """bench/cli_start.py's measurement, as a result row (goal: `llmtune --help` under 0.3 s)."""
    from bench.cli_start import RUNS, median_seconds

    baseline = median_seconds([sys.executable, "-c", "pass"])
    help_time = median_seconds([sys.executable, "-m", "llmtune", "--help"])
    print(f"cold start, median of {RUNS}: python -c pass {baseline:.3f} s, llmtune --help {help_time:.3f} s")
    note = f"python alone {baseline:.3f} s; llmtune's own {help_time - baseline:.3f} s"
    emit("cli_start", [result_row("CLI cold start: llmtune --help (s)", help_time, "< 0.300", help_time < 0.3, note)])


def run_one(name: str, module: str, args: list[str]) -> dict[str, Any]:
    """Run one benchmark, echoing its output as it comes, and return its BENCH_RESULT."""
    print(f"\n=== {name}: python -m {module} {' '.join(args)}  (load {load_average()})", flush=True)
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    result: dict[str, Any] = {"bench": name, "rows": [], "error": None}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        result["error"] = f"exit {proc.returncode}"
    result["seconds"] = time.time() - started
    return result


def value_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.3f}"


def summary(results: list[dict[str, Any]]) -> str:
    lines = [f"{'metric':66s} {'value':>9s}  {'goal':>18s}  {'':4s} note", "-" * 128]
    for res in results:
        if res.get("error"):
            lines.append(f"{res['bench']:66s} {'FAILED':>9s}  {res['error']}")
        for row in res["rows"]:
            verdict = {True: "ok", False: "MISS", None: ""}[row["ok"]]
            lines.append(
                f"{row['metric']:66s} {value_text(row['value']):>9s}  {row['goal']:>18s}  {verdict:4s} {row['note']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the suite runs (no figures)")
    p.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(s[0] for s in SUITE))
    p.add_argument("--cli-start", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cli_start:
        cli_start()
        return
    chosen = [s for s in SUITE if not args.only or s[0] in args.only.split(",")]
    started = datetime.datetime.now().astimezone()
    results = [run_one(name, module, [*extra, *(QUICK.get(name, []) if args.quick else [])])
               for name, module, extra in chosen]  # fmt: skip
    minutes = (datetime.datetime.now().astimezone() - started).total_seconds() / 60
    print(f"\n{started:%Y-%m-%d %H:%M %Z}, {platform.processor() or platform.machine()}, load now {load_average()}, "
          f"{minutes:.1f} min{' (quick: sizes too small for figures)' if args.quick else ''}")  # fmt: skip
    print(summary(results))
    WORK.mkdir(parents=True, exist_ok=True)
    record = {"started": started.isoformat(), "minutes": minutes, "quick": args.quick, "results": results}
    (WORK / "results.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if any(r.get("error") for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
