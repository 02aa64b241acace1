"""Shared pieces of the benchmarks: the workspace (models, data), a step clock, child processes, statistics.

Every benchmark prints its figures and ends with one `BENCH_RESULT {json}` line that bench/run_all.py collects.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench"
RESULT_TAG = "BENCH_RESULT "


def ensure_model(preset: str, work: Path = WORK) -> Path:
    """A local model of an `llmtune init-model` preset (tiny, small), built once under the workspace."""
    out = work / preset
    if not (out / "model.safetensors").is_file():
        from llmtune.jobs.init_model import init_model

        init_model(out, preset=preset, seed=0, overwrite=True)
    return out


def ensure_builtin_data(work: Path = WORK, n_train: int = 2000) -> Path:
    """The built-in synthetic data (llmtune synth-data), written once under the workspace."""
    out = work / f"data-{n_train}"
    if not (out / "sft_messages.jsonl").is_file():
        from llmtune.data.synth import write_builtin_data

        out.mkdir(parents=True, exist_ok=True)
        write_builtin_data(out, n_train=n_train, n_eval=20, seed=0)
    return out


def spread_conversations(n: int, seed: int, lo: int = 10, hi: int = 500) -> list[dict[str, Any]]:
    """Chat rows whose lengths are spread log-uniformly from about `lo` to `hi` tokens (built-in words, ~1 token each).

    Most rows are short and a few are long, as in real chat data; a third have a system prompt or a second turn.
    """
    from llmtune.data.synth_tasks import WORDS

    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, k)))

    rows = []
    for _ in range(n):
        total = int(round(lo * (hi / lo) ** rng.random())) - 8  # ~8 tokens of ChatML markup per turn pair
        answer = max(1, int(total * rng.uniform(0.3, 0.7)))
        messages = [{"role": "user", "content": words(total - answer)}, {"role": "assistant", "content": words(answer)}]
        if rng.random() < 0.33 and total > 60:
            half = answer // 2
            messages[1]["content"] = words(half)
            messages += [{"role": "user", "content": words(4)}, {"role": "assistant", "content": words(answer - half)}]
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def step_clock(path: str | Path) -> Any:
    """A TrainerCallback that appends, at each optimizer step's end, the wall-clock time (time.time()) and the process's
    CPU time so far (time.process_time(): all threads, much less sensitive than wall time to other load)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.handle = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open for the whole run

        def on_step_end(self, args, state, control, **kwargs):
            self.handle.write(f"{state.global_step} {time.time():.6f} {time.process_time():.6f}\n")

        def on_train_end(self, args, state, control, **kwargs):
            self.handle.close()

    return StepClock()


def read_clock(path: Path) -> tuple[list[float], list[float]]:
    """The step-end wall-clock times and CPU times written by `step_clock`, in step order."""
    lines = path.read_text(encoding="utf-8").split("\n") if path.exists() else []
    rows = [line.split() for line in lines if line.strip()]
    return [float(r[1]) for r in rows], [float(r[2]) for r in rows]


def step_durations(ends: Sequence[float], first: int = 5) -> list[float]:
    """Durations of steps `first`..N from their end times (step k lasts from the end of k-1 to the end of k)."""
    return [ends[k - 1] - ends[k - 2] for k in range(max(first, 2), len(ends) + 1)]


@dataclass
class ChildRun:
    """One benchmark child process: exit code, wall time, its own peak RSS, and where its output went."""

    returncode: int
    started: float
    wall_s: float
    max_rss_mib: float
    log: Path
    cpu_s: float = 0.0
    """User + system CPU time of the child (all its threads): much steadier than wall time on a shared machine."""


def run_child(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> ChildRun:
    """Run `argv` to completion; peak RSS is this child's own (os.wait4), not the max over all children."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with log.open("wb") as out:
        started = time.time()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(proc.returncode, started, wall, usage.ru_maxrss / 1024, log, usage.ru_utime + usage.ru_stime)


def thread_env(threads: int) -> dict[str, str]:
    """Environment pinning torch's intra-op threads (0: the library default, one per core).

    On a shared 2-core machine two OpenMP threads wait on each other whenever another process takes a core, and
    step times then swing 10-30x; one thread each makes compared runs far steadier (both sides get the same).
    """
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads > 0 else {}


def check_child(run: ChildRun, what: str) -> None:
    if run.returncode != 0:
        tail = run.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        sys.exit(f"{what} failed (exit {run.returncode}); the end of {run.log}:\n{tail}")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """'min-max' of the repeats, so a reader sees how noisy a median is."""
    return f"{min(values):.3g}-{max(values):.3g}" if values else "n/a"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def emit(name: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Print this benchmark's result rows (metric, value, goal, ok, note) as the final BENCH_RESULT line."""
    print(RESULT_TAG + json.dumps({"bench": name, "rows": rows, "load": load_average(), **extra}), flush=True)


def result_row(metric: str, value: float | None, goal: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    return {"metric": metric, "value": value, "goal": goal, "ok": ok, "note": note}
