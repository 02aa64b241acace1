"""Packing gain: real (non-padding) tokens per second of `llmtune sft` with data.packing on vs off, on chat data whose
lengths spread from ~20 to ~500 tokens, and the loss per trained token with and without packing on the same examples.

Each variant trains one epoch over the same conversations in its own process (same model, max_length, batch size,
seed); throughput counts the real tokens of steps 5..N over their time. The variants are interleaved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

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


def build_trainers(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[bool, Any]:
    """The sft stage's trainers (packing off, on) for `data`, built as `llmtune sft` builds them."""
    from llmtune.recipe import load_recipe
    from llmtune.stages import sft
    from llmtune.stages.args import common_training_args

    trainers = {}
    for packing in (False, True):
        run_dir = WORK / "runs" / "packing" / f"in-process-{packing}"
        recipe = load_recipe(recipe_file(run_dir / "r.yaml", model_dir, data, packing, args, run_dir / "out"))
        trainers[packing] = sft.build(recipe, common_training_args(recipe))
    return trainers


def loss_per_token(trainer: Any) -> float:
    """Loss per trained token over the whole dataset, through the trainer's collator and compute_loss, in eval
    mode (no dropout), in dataset order."""
    import torch

    model, rows = trainer.model.eval(), list(trainer.train_dataset)
    loss_sum = tokens = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), trainer.args.per_device_train_batch_size):
            batch = trainer.data_collator(rows[start : start + trainer.args.per_device_train_batch_size])
            count = int((batch["labels"][:, 1:] != -100).sum())
            loss_sum += float(trainer.compute_loss(model, batch)) * count
            tokens += count
    return loss_sum / tokens


def interleaved_gain(trainers: dict[bool, Any]) -> tuple[float, dict[bool, float]]:
    """Real tokens/s packed over unpacked with the two alternating batch by batch in one process (each packed batch,
    then the next few unpacked ones): forward through the trainer's compute_loss, backward, AdamW. Timing noise
    from other load then hits both alike; the first round is a warm-up and is not counted."""
    import math
    import time

    import torch

    batches = {k: list(t.get_train_dataloader()) for k, t in trainers.items()}
    optimizers = {k: torch.optim.AdamW([p for p in t.model.parameters() if p.requires_grad], lr=2e-4)
                  for k, t in trainers.items()}  # fmt: skip
    per_round = math.ceil(len(batches[False]) / len(batches[True]))
    spent, tokens = {False: 0.0, True: 0.0}, {False: 0, True: 0}
    for i in range(len(batches[True])):
        for packed, chunk in ((True, batches[True][i : i + 1]), (False, batches[False][i * per_round :][:per_round])):
            trainer, model = trainers[packed], trainers[packed].model.train()
            for batch in chunk:
                real = int((batch["input_ids"] != trainer.processing_class.pad_token_id).sum())
                started = time.perf_counter()
                trainer.compute_loss(model, dict(batch)).backward()
                optimizers[packed].step()
                optimizers[packed].zero_grad()
                if i > 0:
                    spent[packed] += time.perf_counter() - started
                    tokens[packed] += real
    rates = {k: tokens[k] / spent[k] if spent[k] else float("nan") for k in spent}
    return rates[True] / rates[False], rates


def _in_process(model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    trainers = build_trainers(model, data, args)
    losses = {k: loss_per_token(t) for k, t in trainers.items()}
    gain, rates = interleaved_gain(trainers)
    return {"loss": losses, "gain": gain, "rates": rates}


def report(args: argparse.Namespace, figures: dict[str, dict[str, list[float]]], inproc: dict[str, Any]) -> list[dict]:
    """Print the figures and return the summary rows: the gain is the median of the paired runs' gains."""
    gains = [a / b for a, b in zip(figures["packed"]["real_tok_s"], figures["unpacked"]["real_tok_s"], strict=True)]
    cpu_gains = [a / b for a, b in zip(figures["packed"]["real_tok_cpu_s"], figures["unpacked"]["real_tok_cpu_s"],
                                       strict=True)]  # fmt: skip
    gain = median(gains)
    bound = (1 - median(figures["packed"]["padding_share"])) / (1 - median(figures["unpacked"]["padding_share"]))
    for v in VARIANTS:
        f = figures[v]
        print(f"  {v:9s} real tokens/s {median(f['real_tok_s']):8.0f} ({spread(f['real_tok_s'])}), "
              f"{median(f['steps']):.0f} steps, {100 * median(f['padding_share']):.0f}% padding")  # fmt: skip
    print(f"  gain, whole runs: {gain:.2f} (paired runs {spread(gains)}; CPU time {median(cpu_gains):.2f}); "
          f"goal >= {GOAL}")  # fmt: skip
    print(f"  gain, batches interleaved in one process: {inproc['gain']:.2f} "
          f"({inproc['rates'][True]:.0f} vs {inproc['rates'][False]:.0f} real tokens/s)")  # fmt: skip
    print(f"  padding-limited bound: {bound:.2f} (real-token share of the batch tensors, packed over unpacked: "
          f"the gain if every position cost the same)")  # fmt: skip
    unpacked_loss, packed_loss = inproc["loss"][False], inproc["loss"][True]
    print(f"  loss per trained token, all {args.rows} conversations: unpacked {unpacked_loss:.6f}, "
          f"packed {packed_loss:.6f}")  # fmt: skip
    model = f"packing ({args.model} model)"
    note = f"paired {spread(gains)}; CPU time {median(cpu_gains):.2f}; padding bound {bound:.2f}"
    same = abs(packed_loss - unpacked_loss) <= 1e-4 * abs(unpacked_loss)
    return [
        result_row(f"{model}: real tokens/s, packed / unpacked", gain, f">= {GOAL}", gain >= GOAL, note),
        result_row(
            f"{model}: same, batches interleaved in one process",
            inproc["gain"],
            "(info)",
            None,
            "forward + backward + AdamW only",
        ),  # fmt: skip
        result_row(
            f"{model}: loss per token, packed - unpacked",
            packed_loss - unpacked_loss,
            "|diff| <= 1e-4 rel",
            same,
            f"{unpacked_loss:.5f} vs {packed_loss:.5f}",
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="llmtune sft: real tokens/s with packing vs without")
    p.add_argument("--model", default="small", help="init-model preset")
    p.add_argument("--rows", type=int, default=200, help="conversations (one epoch each variant)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
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
    emit("packing", report(args, figures, _in_process(model, data, args)))


if __name__ == "__main__":
    main()
