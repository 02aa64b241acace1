"""Packing gain: real (non-padding) tokens per second of `llmtune sft` with data.packing on vs off, on chat data whose
lengths spread from ~20 to ~500 tokens, and the loss per trained token with and without packing on the same examples.

Each variant trains one epoch over the same conversations in its own process (same model, max_length, batch size,
seed); throughput counts the real tokens of steps 5..N over their time. The variants are interleaved.
"""

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
    ensure_model,
    load_average,
    median,
    read_clock,
    result_row,
    run_child,
    spread,
    spread_conversations,
    thread_env,
    write_jsonl,
)

GOAL = 1.8
VARIANTS = ("unpacked", "packed")


def recipe_file(path: Path, model: Path, data: Path, packing: bool, args: argparse.Namespace, out: Path) -> Path:
    import yaml

    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "lora"},
        "data": {
            "train": [{"path": str(data)}],
            "max_length": args.max_length,
            "packing": packing,
            "cache_dir": str(path.parent / "cache"),
        },
        "train": {"epochs": 1, "batch_size": args.batch_size, "logging_steps": 1000, "save_steps": 100_000},
        "output": {"dir": str(out), "overwrite": True},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_variant(variant: str, model: Path, data: Path, args: argparse.Namespace, run_dir: Path) -> dict:
    """One epoch in its own process; real tokens/s and trained tokens/s over steps 5..N, wall and CPU time."""
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = run_dir / "clock.txt"
    for stale in (clock, Path(f"{clock}.tokens")):
        stale.unlink(missing_ok=True)
    recipe = recipe_file(run_dir / "recipe.yaml", model, data, variant == "packed", args, run_dir / "out")
    argv = [sys.executable, "-m", "bench.llmtune_timed", str(clock), "sft", "--recipe", str(recipe)]
    child = run_child(argv, run_dir / "log.txt", {"BENCH_COUNT_TOKENS": "1", **thread_env(args.threads)})
    check_child(child, f"{variant} run in {run_dir}")
    ends, cpu = read_clock(clock)
    counts = [tuple(map(int, line.split())) for line in Path(f"{clock}.tokens").read_text().splitlines()]
    steps = len(ends)
    real = sum(c[0] for c in counts[4:steps])
    trained = sum(c[1] for c in counts[4:steps])
    wall, cpu_s = ends[-1] - ends[3], cpu[-1] - cpu[3]
    return {
        "steps": steps,
        "real_tok_s": real / wall,
        "trained_tok_s": trained / wall,
        "real_tok_cpu_s": real / cpu_s,
        "real_tokens": sum(c[0] for c in counts[:steps]),
        "padding_share": 1 - sum(c[0] for c in counts[:steps]) / sum(c[2] for c in counts[:steps]),
    }


def loss_per_token(model_dir: Path, data: Path, args: argparse.Namespace, n: int = 128) -> tuple[float, float]:
    """Loss per trained token over the first `n` conversations, unpacked and packed, through the sft stage's own
    trainer (its collator and compute_loss), model in eval mode (no dropout)."""
    import torch

    from llmtune.recipe import load_recipe
    from llmtune.stages import sft
    from llmtune.train import common_training_args

    subset = write_jsonl(WORK / "runs" / "packing" / "loss-subset.jsonl", _read_jsonl(data)[:n])
    totals = []
    for packing in (False, True):
        run_dir = WORK / "runs" / "packing" / f"loss-{packing}"
        recipe = load_recipe(recipe_file(run_dir / "r.yaml", model_dir, subset, packing, args, run_dir / "out"))
        trainer = sft.build(recipe, common_training_args(recipe))
        model = trainer.model.eval()
        loss_sum = tokens = 0.0
        data_rows = list(trainer.train_dataset)
        with torch.no_grad():
            for start in range(0, len(data_rows), args.batch_size):
                batch = trainer.data_collator(data_rows[start : start + args.batch_size])
                count = int((batch["labels"][:, 1:] != -100).sum())
                loss_sum += float(trainer.compute_loss(model, batch)) * count
                tokens += count
        totals.append(loss_sum / tokens)
    return totals[0], totals[1]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune sft: real tokens/s with packing vs without")
    p.add_argument("--model", default="small", help="init-model preset")
    p.add_argument("--rows", type=int, default=200, help="conversations (one epoch each variant)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: library default)")
    args = p.parse_args(argv)
    model = ensure_model(args.model)
    root = WORK / "runs" / "packing"
    data = write_jsonl(root / f"spread-{args.rows}.jsonl", spread_conversations(args.rows, seed=0))
    print(f"packing: {args.model} model, {args.rows} conversations of ~20-500 tokens, max_length {args.max_length}, "
          f"batch {args.batch_size}; load {load_average()}", flush=True)  # fmt: skip
    figures: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    for rep in range(args.repeats):
        for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
            got = run_variant(variant, model, data, args, root / variant)
            for key, value in got.items():
                figures[variant].setdefault(key, []).append(value)
            print(f"  rep {rep + 1} {variant:9s} " + "  ".join(f"{k} {v:.4g}" for k, v in got.items())
                  + f"  (load {load_average()})", flush=True)  # fmt: skip
    gains = [a / b for a, b in zip(figures["packed"]["real_tok_s"], figures["unpacked"]["real_tok_s"], strict=True)]
    cpu_gain = median(figures["packed"]["real_tok_cpu_s"]) / median(figures["unpacked"]["real_tok_cpu_s"])
    gain = median(figures["packed"]["real_tok_s"]) / median(figures["unpacked"]["real_tok_s"])
    bound = (1 - median(figures["packed"]["padding_share"])) / (1 - median(figures["unpacked"]["padding_share"]))
    unpacked_loss, packed_loss = loss_per_token(model, data, args)
    same = abs(packed_loss - unpacked_loss) <= 1e-4 * abs(unpacked_loss)
    for v in VARIANTS:
        f = figures[v]
        print(
            f"  {v:9s} real tokens/s {median(f['real_tok_s']):8.0f} ({spread(f['real_tok_s'])}), "
            f"{median(f['steps']):.0f} steps, {100 * median(f['padding_share']):.0f}% of the batch tensors is padding"
        )
    print(f"  gain (packed / unpacked real tokens/s): {gain:.2f} (paired {spread(gains)}; CPU-time {cpu_gain:.2f}; "
          f"goal >= {GOAL}); the padding-limited bound is {bound:.2f} (real-token share of the batch tensors, packed "
          f"over unpacked: what the gain would be if every padded position cost the same)")  # fmt: skip
    print(f"  loss per trained token, first 128 conversations: unpacked {unpacked_loss:.6f}, packed {packed_loss:.6f}")
    rows = [
        result_row(
            f"packing ({args.model} model): real tokens/s, packed / unpacked",
            gain,
            f">= {GOAL}",
            gain >= GOAL,
            f"paired {spread(gains)}; CPU-time {cpu_gain:.2f}; padding bound {bound:.2f}",
        ),  # fmt: skip
        result_row(
            f"packing ({args.model} model): loss per token, packed - unpacked",
            packed_loss - unpacked_loss,
            "|diff| <= 1e-4 rel",
            same,
            f"{unpacked_loss:.5f} vs {packed_loss:.5f}",
        ),  # fmt: skip
    ]
    emit("packing", rows)


if __name__ == "__main__":
    main()
