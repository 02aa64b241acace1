"""DPO on the SmolLM-135M-shaped model of bench/real_model.py (issue #13): llmtune dpo against a plain TRL DPOTrainer
script (bench/trl_dpo.py), same recipe, each run in a fresh process, interleaved; CPU time, steps 2..N CPU time and
peak RSS. Goal: llmtune / TRL <= 0.8 for CPU time and for peak RSS.

Model: bench.real_model.ensure_model (hidden 576, 9/3 heads, vocabulary 49,152, tied, stored bfloat16; --layers of
its 30). Data: preference pairs of built-in words, a prompt and two answers whose lengths are spread log-uniformly
(about 10-250 tokens per pair side, a few cut at max_length). Recipe: LoRA r16/alpha32/dropout 0.05 on all linear
layers, a new adapter whose disabled base is the reference, sigmoid loss, beta 0.1, batch 4, max_length 256,
lr 5e-6 cosine, 6 steps (--quick: 2 layers, 4 steps, one repeat). llmtune runs with its defaults otherwise.

    python -m bench.dpo_real [--quick] [--layers 4] [--steps 6] [--repeats 1] [--threads 1]
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
    load_average,
    median,
    read_clock,
    result_row,
    run_child,
    spread,
    thread_env,
    write_jsonl,
)
from bench.real_model import ensure_model

GOAL_CPU, GOAL_RSS = 0.8, 0.8  # llmtune / TRL
VARIANTS = ("llmtune", "trl")


@dataclass(frozen=True)
class Settings:
    layers: int = 4
    steps: int = 6
    batch_size: int = 4
    max_length: int = 256
    lr: float = 5e-6
    beta: float = 0.1
    seed: int = 42
    n_train: int = 400
    threads: int = 0


def preference_pairs(n: int, seed: int, lo: int = 10, hi: int = 250) -> list[dict]:
    """Conversational preference rows (TRL's format, and llmtune's `preference`): a user prompt, a chosen and a
    rejected answer of built-in words (about one token each), lengths spread log-uniformly from `lo` to `hi`."""
    from llmtune.data.synth_tasks import WORDS

    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, k)))

    rows = []
    for _ in range(n):
        total = int(round(lo * (hi / lo) ** rng.random()))
        prompt = max(2, int(total * rng.uniform(0.3, 0.6)))
        rows.append({
            "prompt": [{"role": "user", "content": words(prompt)}],
            "chosen": [{"role": "assistant", "content": words(total - prompt)}],
            "rejected": [{"role": "assistant", "content": words(int((total - prompt) * rng.uniform(0.5, 1.5)))}],
        })  # fmt: skip
    return rows


def ensure_data(s: Settings, work: Path = WORK) -> Path:
    path = work / "dpo-real-data" / f"train-{s.n_train}.jsonl"
    if not path.is_file():
        write_jsonl(path, preference_pairs(s.n_train, seed=0))
    return path


def llmtune_argv(model: Path, data: Path, s: Settings, run_dir: Path) -> list[str]:
    import yaml

    recipe = {
        "stage": "dpo",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}},
        "data": {"train": [{"path": str(data)}], "max_length": s.max_length, "cache_dir": str(run_dir / "cache")},
        "dpo": {"beta": s.beta, "loss_type": "sigmoid"},
        "train": {"max_steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "scheduler": "cosine",
                  "logging_steps": s.steps, "save_steps": 100_000, "seed": s.seed},
        "output": {"dir": str(run_dir / "out"), "overwrite": True},
    }  # fmt: skip
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return [sys.executable, "-m", "bench.llmtune_timed", str(run_dir / "clock.txt"), "dpo", "--recipe", str(path)]


def trl_argv(model: Path, data: Path, s: Settings, run_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "bench.trl_dpo", "--model", str(model), "--data", str(data), "--out",
            str(run_dir / "out"), "--max-length", str(s.max_length), "--batch-size", str(s.batch_size), "--lr",
            str(s.lr), "--beta", str(s.beta), "--steps", str(s.steps), "--seed", str(s.seed), "--logging-steps",
            str(s.steps), "--clock", str(run_dir / "clock.txt")]  # fmt: skip
    return argv


def final_loss(variant: str, out: Path) -> float | None:
    if variant == "llmtune":
        return json.loads((out / "summary.json").read_text(encoding="utf-8")).get("final_loss")
    history = json.loads((out / "log_history.json").read_text(encoding="utf-8"))
    return next((row["loss"] for row in reversed(history) if "loss" in row), None)


def run_variant(variant: str, model: Path, data: Path, s: Settings, run_dir: Path) -> dict[str, float]:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    argv = (llmtune_argv if variant == "llmtune" else trl_argv)(model, data, s, run_dir)
    env = {"HF_DATASETS_CACHE": str(run_dir / "hf-datasets"), **thread_env(s.threads)}
    child = run_child(argv, run_dir / "log.txt", env)
    check_child(child, f"{variant} run in {run_dir}")
    got = {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "rss_mib": child.max_rss_mib}
    ends, cpu = read_clock(run_dir / "clock.txt")
    if len(ends) >= 2:  # steps 2..N: without the first step's warm-up
        got["train_s"], got["train_cpu_s"] = ends[-1] - ends[0], cpu[-1] - cpu[0]
    loss = final_loss(variant, run_dir / "out")
    got["loss"] = float("nan") if loss is None else loss
    return got


KEYS = (
    ("wall_s", "wall s"),
    ("cpu_s", "CPU s"),
    ("train_s", "steps 2..N s"),
    ("train_cpu_s", "steps 2..N CPU s"),
    ("rss_mib", "peak RSS MiB"),
    ("loss", "final loss"),
)
GOALS = {"cpu_s": GOAL_CPU, "train_cpu_s": GOAL_CPU, "rss_mib": GOAL_RSS}


def report(figures: dict[str, dict[str, list[float]]], repeats: int) -> list[dict]:
    print(f"\nmedian over {repeats} repeats (min-max)")
    for variant, fig in figures.items():
        cells = [f"{label} {median(fig[k]):.4g} ({spread(fig[k])})" for k, label in KEYS if fig.get(k)]
        print(f"  {variant:8s} " + "  ".join(cells))
    rows: list[dict] = []
    if not all(v in figures for v in VARIANTS):
        return rows
    for key, label in KEYS:
        if key == "loss" or not figures["llmtune"].get(key) or not figures["trl"].get(key):
            continue
        ratio = median(figures["llmtune"][key]) / median(figures["trl"][key])
        goal = GOALS.get(key)
        rows.append(result_row(f"DPO real model: {label}, llmtune / trl", ratio, f"<= {goal}" if goal else "(info)",
                               ratio <= goal if goal else None))  # fmt: skip
        print(f"  {label}: llmtune / trl = {ratio:.3f} (goal {f'<= {goal}' if goal else 'info'})")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 layers, 4 steps, one repeat")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the library default)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, among llmtune, trl")
    args = p.parse_args(argv)
    s = Settings(layers=2, steps=4, threads=args.threads) if args.quick else Settings(
        layers=args.layers, steps=args.steps, threads=args.threads)  # fmt: skip
    repeats = 1 if args.quick else args.repeats
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        sys.exit(f"unknown variants {sorted(unknown)}; choose among {', '.join(VARIANTS)}")
    print(f"dpo real model: {json.dumps(asdict(s))}; variants {variants}; load {load_average()}", flush=True)
    model, data = ensure_model(s.layers), ensure_data(s)
    root = WORK / "runs" / f"dpo-real-{s.layers}l"
    figures: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for rep in range(repeats):
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            got = run_variant(variant, model, data, s, root / variant)
            for key, value in got.items():
                figures[variant].setdefault(key, []).append(value)
            print(f"  rep {rep + 1} {variant:8s} " + "  ".join(f"{k} {v:.4g}" for k, v in got.items()),
                  f"(load {load_average()})", flush=True)  # fmt: skip
    emit("dpo_real", report(figures, repeats), settings=asdict(s))


if __name__ == "__main__":
    main()
