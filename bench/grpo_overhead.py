"""llmtune grpo against the plain TRL GRPO script (bench/trl_grpo.py): steady step time and peak RSS as ratios, and
the share of a step spent generating, on the tiny model with the same prompts (in llmtune's shuffled order), reward
(a 0-20 character length band), LoRA and sampling settings; each run in its own process, the two interleaved."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
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


def prompts_file(data: Path, seed: int, out: Path) -> Path:
    """The prompts llmtune's loader gives grpo, in its order, as TRL prompt rows (so both sample the same batches)."""
    from llmtune.data.load import read_rows
    from llmtune.schema import DataSource

    rows = read_rows([DataSource(path=str(data), max_samples=256)], kind="prompt", seed=seed).train
    out.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows), encoding="utf-8")
    return out


def recipe_file(path: Path, model: Path, data: Path, steps: int, seed: int, out: Path) -> Path:
    import yaml

    recipe = {
        "stage": "grpo", "model": {"name_or_path": str(model)}, "method": {"kind": "lora"},
        "data": {"train": [{"path": str(data), "max_samples": 256}], "cache_dir": str(path.parent / "cache")},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "logging_steps": 10, "save_steps": 100_000,
                  "seed": seed},
        "rl": {"num_generations": 4, "max_new_tokens": 16, "beta": 0.04, "rewards": [{"length": [0, 20]}]},
        "output": {"dir": str(out), "overwrite": True},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_variant(variant: str, model: Path, data: Path, prompts: Path, steps: int, seed: int, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    clock, gen = run_dir / "clock.txt", run_dir / "generate.txt"
    if variant == "trl":
        argv = [sys.executable, "-m", "bench.trl_grpo", "--model", str(model), "--data", str(prompts), "--out",
                str(run_dir / "out"), "--steps", str(steps), "--seed", str(seed), "--clock", str(clock),
                "--gen-clock", str(gen)]  # fmt: skip
        env = {}
    else:
        recipe = recipe_file(run_dir / "recipe.yaml", model, data, steps, seed, run_dir / "out")
        argv = [sys.executable, "-m", "bench.llmtune_timed", str(clock), "grpo", "--recipe", str(recipe)]
        env = {"BENCH_GEN_CLOCK": str(gen)}
    child = run_child(argv, run_dir / "log.txt", {**env, **thread_env(1)})
    check_child(child, f"{variant} run in {run_dir}")
    ends, _ = read_clock(clock)
    if len(ends) != steps:
        sys.exit(f"{variant}: expected {steps} step times in {clock}, found {len(ends)}")
    gen_times = [float(x) for x in gen.read_text().split()] if gen.exists() else []
    steady = step_durations(ends, first=3)
    return {"step_s": median(steady), "rss_mib": child.max_rss_mib,
            "generate_share": sum(gen_times) / (ends[-1] - ends[0] + steady[0]) if gen_times else 0.0}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune grpo vs a plain TRL GRPO script: step time, RSS, generate share")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    print(f"grpo overhead: steps {args.steps}, repeats {args.repeats}; load {load_average()}", flush=True)
    model, data = ensure_model("tiny"), ensure_builtin_data() / "sft_messages.jsonl"
    root = WORK / "runs" / "grpo-overhead"
    root.mkdir(parents=True, exist_ok=True)
    prompts = prompts_file(data, args.seed, root / "prompts.jsonl")
    figures: dict[str, dict[str, list[float]]] = {"llmtune": {}, "trl": {}}
    for rep in range(args.repeats):
        for variant in ("llmtune", "trl") if rep % 2 == 0 else ("trl", "llmtune"):
            got = run_variant(variant, model, data, prompts, args.steps, args.seed, root / variant)
            for key, value in got.items():
                figures[variant].setdefault(key, []).append(value)
            print(f"  rep {rep + 1} {variant:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
    rows = []
    for key, label in (("step_s", "steady step time"), ("rss_mib", "peak RSS")):
        pairs = [a / b for a, b in zip(figures["llmtune"][key], figures["trl"][key], strict=True)]
        ratio = median(pairs)
        rows.append(result_row(f"grpo tiny: {label}, llmtune / TRL", ratio, f"<= {GOAL}", ratio <= GOAL,
                               f"paired {spread(pairs)}"))  # fmt: skip
        print(f"  {label}: llmtune / TRL = {ratio:.3f} (paired {spread(pairs)}; goal <= {GOAL})")
    for variant in ("llmtune", "trl"):
        share = median(figures[variant]["generate_share"])
        rows.append(result_row(f"grpo tiny: share of a step generating ({variant})", share, "(info)", None))
        print(f"  share of a step generating ({variant}): {share:.2f}")
    emit("grpo_overhead", rows, steps=args.steps, repeats=args.repeats)


if __name__ == "__main__":
    main()
