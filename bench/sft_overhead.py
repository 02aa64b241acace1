"""llmtune sft against the plain TRL script (bench/trl_baseline.py): time to the first optimizer step, steady step
time and peak RSS, same model, data and settings, each run in its own process, the two interleaved.

Time to first step runs from the parent starting the process to the first `on_step_end` (interpreter start, imports,
tokenization and model load included); steady step time is the median of steps 5..N; peak RSS is the child's
own ru_maxrss (os.wait4). llmtune runs cold (an empty tokenized-data cache, as TRL re-tokenizes every run); a third
variant, llmtune with the cache already filled (one run), is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    WORK,
    check_child,
    emit,
    ensure_builtin_data,
    ensure_model,
    load_average,
    median,
    read_clock,
    result_row,
    run_child,
    spread,
    step_durations,
    thread_env,
)

GOAL = 1.05
VARIANTS = ("llmtune", "trl", "llmtune-warm")


@dataclass(frozen=True)
class Settings:
    max_length: int = 256
    batch_size: int = 4
    lr: float = 2e-4
    steps: int = 15
    seed: int = 42
    logging_steps: int = 10
    threads: int = 1


def trl_order(data: Path, seed: int, out: Path) -> Path:
    """The data file in the order llmtune's loader shuffles it into (llmtune.data.load.read_rows), so the trainer's
    seeded sampler gives both runs the same batches and so the same padding."""
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(f"shuffle:{seed}").shuffle(lines)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def llmtune_recipe(path: Path, model: Path, data: Path, s: Settings, cache: Path, out: Path) -> Path:
    import yaml

    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "lora"},
        "data": {"train": [{"path": str(data)}], "max_length": s.max_length, "cache_dir": str(cache)},
        "train": {
            "max_steps": s.steps,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "scheduler": "cosine",
            "logging_steps": s.logging_steps,
            "save_steps": 100_000,
            "seed": s.seed,
        },
        "output": {"dir": str(out), "overwrite": True},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_variant(variant: str, model: Path, data: Path, ordered: Path, s: Settings, run_dir: Path) -> dict:
    """One training process; returns first-step, steady-step, wall and peak-RSS figures."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    clock = run_dir / "clock.txt"
    if variant == "trl":
        argv = [sys.executable, "-m", "bench.trl_baseline", "--model", str(model), "--data", str(ordered)]
        argv += ["--out", str(run_dir / "out"), "--max-length", str(s.max_length), "--batch-size", str(s.batch_size)]
        argv += ["--lr", str(s.lr), "--steps", str(s.steps), "--seed", str(s.seed), "--clock", str(clock)]
        argv += ["--logging-steps", str(s.logging_steps)]
        env = {"HF_DATASETS_CACHE": str(run_dir / "hf-datasets")}  # cold, as llmtune's
    else:
        cache = run_dir.parent / "warm-cache" if variant == "llmtune-warm" else run_dir / "cache"
        recipe = llmtune_recipe(run_dir / "recipe.yaml", model, data, s, cache, run_dir / "out")
        argv = [sys.executable, "-m", "bench.llmtune_timed", str(clock), "sft", "--recipe", str(recipe)]
        env = {}
    child = run_child(argv, run_dir / "log.txt", {**env, **thread_env(s.threads)})
    check_child(child, f"{variant} run in {run_dir}")
    ends, cpu = read_clock(clock)
    if len(ends) != s.steps:
        sys.exit(f"{variant}: expected {s.steps} step times in {clock}, found {len(ends)}")
    return {
        "first_step_s": ends[0] - child.started,
        "first_step_cpu_s": cpu[0],
        "step_s": median(step_durations(ends)),
        "step_cpu_s": median(step_durations(cpu)),
        "rss_mib": child.max_rss_mib,
    }


def warm_up_cache(model: Path, data: Path, s: Settings, root: Path) -> None:
    """Fill the shared cache the llmtune-warm variant reads, with `llmtune tokenize` (not measured)."""
    shutil.rmtree(root / "warm-cache", ignore_errors=True)
    recipe = llmtune_recipe(root / "warm-up.yaml", model, data, s, root / "warm-cache", root / "unused")
    check_child(run_child([sys.executable, "-m", "llmtune", "tokenize", "--recipe", str(recipe)], root / "warm-up.log"),
                "llmtune tokenize")  # fmt: skip


def measure(preset: str, repeats: int, s: Settings) -> dict[str, dict[str, list[float]]]:
    """llmtune and TRL interleaved, the order swapped each repeat against load drift; then one warm-cache run."""
    model, data = ensure_model(preset), ensure_builtin_data() / "sft_messages.jsonl"
    root = WORK / "runs" / f"overhead-{preset}"
    root.mkdir(parents=True, exist_ok=True)
    ordered = trl_order(data, s.seed, root / "sft_messages.trl-order.jsonl")
    warm_up_cache(model, data, s, root)
    figures: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    plan = [pair if rep % 2 == 0 else pair[::-1] for rep in range(repeats) for pair in [("llmtune", "trl")]]
    for rep, variant in [(rep, v) for rep, pair in enumerate(plan) for v in pair] + [(0, "llmtune-warm")]:
        got = run_variant(variant, model, data, ordered, s, root / variant)
        for key, value in got.items():
            figures[variant].setdefault(key, []).append(value)
        print(f"  {preset} rep {rep + 1} {variant:13s} " + "  ".join(f"{k} {v:.3f}" for k, v in got.items()),
              f" (load {load_average()})", flush=True)  # fmt: skip
    return figures


def paired_ratios(figures: dict, key: str, a: str = "llmtune", b: str = "trl") -> list[float]:
    return [x / y for x, y in zip(figures[a][key], figures[b][key], strict=True)]


METRICS = (
    ("first_step_s", "time to first step", 1.0, "s"),
    ("step_s", "steady step time", 1000.0, "ms"),
    ("rss_mib", "peak RSS", 1.0, "MiB"),
    ("first_step_cpu_s", "CPU time to first step", 1.0, "s"),
    ("step_cpu_s", "CPU time per steady step", 1000.0, "ms"),
)


def report(preset: str, figures: dict) -> list[dict]:
    """Print the table for one model and return its summary rows: the median of the paired ratios (each llmtune
    run over the TRL run beside it, which cancels slow load drift), with their spread.

    Wall-clock figures are the goals; CPU-time figures are printed beside them because on a shared machine they
    move much less with other people's load.
    """
    print(f"\n{preset}: median over {len(figures['trl']['step_s'])} repeats (min-max)")
    print(f"  {'':26s}" + "".join(f"{v:>24s}" for v in VARIANTS))
    for key, label, scale, unit in METRICS:
        cells = [f"{scale * median(figures[v][key]):9.4g} ({spread([scale * x for x in figures[v][key]]):>11s})"
                 for v in VARIANTS]  # fmt: skip
        print(f"  {label + ' ' + unit:26s}" + "".join(f"{c:>24s}" for c in cells))
    rows = []
    for key, label, _, _ in METRICS:
        pairs = paired_ratios(figures, key)
        ratio = median(pairs)
        of_medians = median(figures["llmtune"][key]) / median(figures["trl"][key])
        note = f"paired {spread(pairs)}; ratio of medians {of_medians:.3f}"
        if key.startswith("first_step"):
            note += f"; warm cache {median(figures['llmtune-warm'][key]) / median(figures['trl'][key]):.2f}"
        goal = f"<= {GOAL}" if "cpu" not in key else "(info)"
        ok = ratio <= GOAL if "cpu" not in key else None
        rows.append(result_row(f"{preset}: {label}, llmtune / TRL", ratio, goal, ok, note))
        print(f"  {label}: llmtune / TRL = {ratio:.3f} ({note}; goal {goal})")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune sft vs a plain TRL script: first step, steady step, peak RSS")
    p.add_argument("--models", default="tiny,small", help="comma-separated init-model presets")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: library default)")
    args = p.parse_args(argv)
    s = Settings(steps=args.steps, threads=args.threads)
    print(f"sft overhead: {json.dumps(asdict(s))}; load {load_average()}", flush=True)
    rows = []
    for preset in args.models.split(","):
        rows += report(preset, measure(preset, args.repeats, s))
    emit("sft_overhead", rows, settings=asdict(s))


if __name__ == "__main__":
    main()
