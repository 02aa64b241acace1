"""GPU throughput, MFU and peak memory of llmtune sft on Llama-architecture models of real sizes (random weights).

Shapes are those of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B, built from a LlamaConfig (no download), written
once under --work, then trained through llmtune's own path (Recipe -> llmtune.stages.sft.build -> trainer.train)
on synthetic chat data (~30 to ~2,048 tokens), each variant in its own process: method (lora, qlora, full) x
packing (on, off) x Liger kernels (off, on; skipped with a message when liger_kernel is not importable).

MFU = real tokens/s x k x N / peak. N counts the parameters that take part in a matmul for every token: all of the
model except the input embedding table, plus the LM head (for tied embeddings the head reuses that table but still
costs vocab x hidden multiply-adds). k = 6 for full fine-tuning (forward 2N, backward 4N) and 4 for LoRA/QLoRA
(the frozen base gets input gradients, 2N, but no weight gradients; the adapters' own FLOPs are ignored).
Attention-score FLOPs and activation-checkpointing recomputation are not counted (PaLM's 12 x layers x hidden x
sequence per token would add 11% for 1B at 2,048 tokens), nor are padding tokens. Peak = dense bf16 tensor-core
FLOP/s of the device: H100 SXM and H200 989 TFLOP/s, H100 PCIe 756, A100 312; --peak-tflops for others.

--dry-run runs the same code on the CPU with a tiny shape, so the script is exercised where no GPU is lent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import WORK, ensure_model, spread_conversations, step_durations, write_jsonl

SHAPES: dict[str, dict[str, Any]] = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "tiny": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1037, "tie_word_embeddings": False},
}  # fmt: skip
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0))
ANCHORS = (
    "torchtune (published): Llama-3-8B QLoRA 7.4 GiB, LoRA 16.2 GiB peak memory at batch 2, length 2048",
    "well-tuned training code: 35-45% MFU on an H100",
)
RESULT = "BENCH_VARIANT "


@dataclass(frozen=True)
class Variant:
    shape: str
    method: str
    packing: bool
    liger: bool
    batch_size: int
    seq: int
    steps: int
    checkpointing: bool
    attn: str

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.method}-{'packed' if self.packing else 'padded'}{'-liger' if self.liger else ''}"


def _flags(value: str, what: str) -> list[bool]:
    table = {"on": [True], "off": [False], "both": [False, True]}
    if value not in table:
        raise argparse.ArgumentTypeError(f"{what}: {value!r}; choose on, off or both")
    return table[value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="llmtune sft on real Llama shapes: tokens/s, MFU, peak memory")
    p.add_argument("--shapes", default="1b,3b,8b", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--methods", default="lora,qlora,full", help="comma-separated: lora, qlora, full")
    p.add_argument("--packing", default="both", help="on, off or both")
    p.add_argument("--liger", default="both", help="on, off or both")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048, help="data.max_length")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps; throughput counts steps 4..N")
    p.add_argument("--checkpointing", choices=["on", "off"], default="on", help="activation checkpointing")
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"], default="sdpa")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, if not detected")
    p.add_argument("--work", type=Path, default=WORK / "gpu", help="model dirs, data and runs")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, 5 steps of 128 tokens: checks the path")
    p.add_argument("--grpo", choices=["on", "off"], default="on", help="also a GRPO (LoRA) row per shape")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant (JSON) in this process
    p.add_argument("--grpo-shape", help=argparse.SUPPRESS)  # internal: run the GRPO row of one shape
    p.add_argument("--write-model", help=argparse.SUPPRESS)  # internal: write one shape's model dir
    args = p.parse_args(argv)
    if args.dry_run:
        args.shapes, args.seq, args.steps = "tiny", 128, 5
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            p.error(f"--shapes: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    for method in args.methods.split(","):
        if method not in ("lora", "qlora", "full"):
            p.error(f"--methods: unknown method {method!r}; choose from lora, qlora, full")
    try:
        args.packing_flags, args.liger_flags = _flags(args.packing, "--packing"), _flags(args.liger, "--liger")
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    return args


def variants(args: argparse.Namespace) -> list[Variant]:
    """Every combination asked for, in shape order (each shape's model dir is written once)."""
    return [
        Variant(
            shape, method, packing, liger, args.batch_size, args.seq, args.steps, args.checkpointing == "on", args.attn
        )  # fmt: skip
        for shape, method, packing, liger in itertools.product(
            args.shapes.split(","), args.methods.split(","), args.packing_flags, args.liger_flags
        )
    ]


def matmul_params(config: Any) -> int:
    """N: parameters multiplied with every token (everything but the input embedding, plus the LM head)."""
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    attn = h * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    norms = 2 * h
    return n_layers * (attn + 3 * h * i + norms) + h + h * config.vocab_size


def flops_per_token(method: str, n: int) -> int:
    return (6 if method == "full" else 4) * n


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS if key in device_name), None)


def write_model(shape: str, work: Path) -> Path:
    """A model dir of `shape` with random weights (bf16, made on the GPU; fp32 on the CPU) and the tiny init-model
    tokenizer, whose ids fit any vocabulary. Run in a child process, so no GPU memory stays held by the parent."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = work / f"model-{shape}"
    if (out / "config.json").is_file():
        return out
    tokenizer_dir = ensure_model("tiny", work)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def recipe_for(v: Variant, model_dir: Path, data: Path, work: Path) -> Any:
    from llmtune.schema import Recipe

    return Recipe.model_validate(
        {
            "stage": "sft",
            "model": {"name_or_path": str(model_dir), "attn_implementation": v.attn},
            "method": {"kind": v.method},
            "data": {
                "train": [{"path": str(data)}],
                "max_length": v.seq,
                "packing": v.packing,
                "cache_dir": str(work / "cache"),
            },  # fmt: skip
            "train": {
                "max_steps": v.steps,
                "batch_size": v.batch_size,
                "lr": 1e-5,
                "logging_steps": 10_000,
                "save_steps": 100_000,
                "gradient_checkpointing": v.checkpointing,
                "extra": {"use_liger_kernel": True} if v.liger else {},
            },  # fmt: skip
            "output": {"dir": str(work / "runs" / v.name), "overwrite": True},
        }
    )


def run_variant(v: Variant, work: Path, peak_tflops: float | None) -> dict[str, Any]:
    """Build the trainer through llmtune.stages.sft, train v.steps steps, and measure (in this process)."""
    import time

    import torch

    from bench.llmtune_timed import counting
    from llmtune import console
    from llmtune.stages import sft
    from llmtune.stages.args import common_training_args

    console.set_verbosity(console.QUIET)
    cuda = torch.cuda.is_available()
    rows = max(4 * v.steps * v.batch_size, v.steps * v.batch_size * v.seq // 300)
    data = write_jsonl(work / f"data-{v.seq}-{rows}.jsonl", spread_conversations(rows, seed=0, lo=30, hi=v.seq))
    recipe = recipe_for(v, work / f"model-{v.shape}", data, work)
    trainer = sft.build(recipe, common_training_args(recipe))
    clock = work / "runs" / f"{v.name}.clock"
    clock.parent.mkdir(parents=True, exist_ok=True)
    clock.unlink(missing_ok=True)
    Path(f"{clock}.tokens").unlink(missing_ok=True)
    trainer.data_collator = counting(trainer.data_collator, trainer.processing_class.pad_token_id, f"{clock}.tokens")
    ends: list[float] = []
    trainer.add_callback(_EndTimes(ends, cuda))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    real = [int(line.split()[0]) for line in Path(f"{clock}.tokens").read_text().splitlines()][: len(ends)]
    steady = step_durations(ends, first=4)
    tokens_s = sum(real[3:]) / sum(steady) if steady else float("nan")
    n = matmul_params(trainer.model.config)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_flops(device, peak_tflops) if cuda else None
    return {
        "variant": v.name, **asdict(v), "device": device, "tokens_s": tokens_s, "step_s": sum(steady) / len(steady),
        "matmul_params": n, "k": flops_per_token(v.method, n) // n,
        "mfu": tokens_s * flops_per_token(v.method, n) / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "at": time.time(),
    }  # fmt: skip


def run_grpo(shape: str, work: Path, steps: int) -> dict[str, Any]:
    """llmtune grpo (LoRA, 8 prompts x 4 samples of up to 128 tokens a step, a length reward, beta 0.04) through
    llmtune.stages.grpo: steady step time, the share of it spent generating, completion tokens/s, peak memory."""
    import time

    import torch

    from bench.trl_grpo import time_generate
    from llmtune import console
    from llmtune.schema import Recipe
    from llmtune.stages import grpo
    from llmtune.stages.args import common_training_args

    console.set_verbosity(console.QUIET)
    gen_clock = work / "runs" / f"{shape}-grpo.generate"
    gen_clock.parent.mkdir(parents=True, exist_ok=True)
    gen_clock.unlink(missing_ok=True)
    time_generate(str(gen_clock))
    data = write_jsonl(work / "prompts.jsonl", [{"prompt": f"Write about the number {i}."} for i in range(256)])
    recipe = Recipe.model_validate({
        "stage": "grpo", "model": {"name_or_path": str(work / f"model-{shape}")}, "method": {"kind": "lora"},
        "data": {"train": [{"path": str(data)}], "cache_dir": str(work / "cache")},
        "train": {"max_steps": steps, "batch_size": 32, "lr": 1e-5, "logging_steps": 10_000, "save_steps": 100_000},
        "rl": {"num_generations": 4, "max_new_tokens": 128, "rewards": [{"length": [0, 200]}]},
        "output": {"dir": str(work / "runs" / f"{shape}-grpo"), "overwrite": True},
    })  # fmt: skip
    trainer = grpo.build(recipe, common_training_args(recipe))
    cuda = torch.cuda.is_available()
    ends: list[float] = []
    trainer.add_callback(_EndTimes(ends, cuda))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = step_durations(ends, first=3)
    generated = [float(x) for x in gen_clock.read_text().split()][2:]
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    mean_len = lengths[-1] if lengths else float("nan")
    return {
        "variant": f"{shape}-grpo-lora", "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_s": sum(steady) / len(steady), "generate_share": sum(generated) / sum(steady),
        "tokens_s": 32 * mean_len / (sum(steady) / len(steady)), "mfu": None, "matmul_params": matmul_params(
            trainer.model.config), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "at": time.time(),
    }  # fmt: skip


def _EndTimes(ends: list[float], cuda: bool) -> Any:  # noqa: N802 - a TrainerCallback instance factory
    import time

    import torch
    from transformers import TrainerCallback

    class EndTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    return EndTimes()


def skip_reason(v: Variant) -> str | None:
    import importlib.util

    if v.liger and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (pip install liger-kernel)"
    if v.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def run_child(v: Variant | str, args: argparse.Namespace) -> dict[str, Any]:
    """One variant (or a shape's GRPO row) in its own process (clean peak-memory counters; an OOM ends only it)."""
    what = ["--grpo-shape", v] if isinstance(v, str) else ["--variant", json.dumps(asdict(v))]
    argv = [sys.executable, "-m", "bench.gpu", *what, "--work", str(args.work), "--steps", str(args.steps)]
    if args.peak_tflops:
        argv += ["--peak-tflops", str(args.peak_tflops)]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    oom = "OutOfMemoryError" in proc.stderr or "CUDA out of memory" in proc.stderr
    name = f"{v}-grpo-lora" if isinstance(v, str) else v.name
    return {"variant": name, "error": "out of memory" if oom else f"exit {proc.returncode}: {proc.stderr[-600:]}"}


def fmt(row: dict[str, Any]) -> str:
    if "error" in row or "skipped" in row:
        return f"  {row['variant']:28s} {row.get('skipped') or row['error']}"
    mfu = f"{100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else "  n/a"
    mem = f"{row['peak_mem_gib']:6.1f}" if row.get("peak_mem_gib") is not None else "   n/a"
    line = f"  {row['variant']:28s} {row['tokens_s']:10,.0f} {mfu:>7s} {mem:>9s}   N={row['matmul_params'] / 1e6:,.1f}M"
    if "generate_share" in row:  # a GRPO row: tokens/s counts generated tokens
        line += f"   step {row['step_s']:.2f}s, {100 * row['generate_share']:.0f}% generating"
    return line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant:
        v = Variant(**json.loads(args.variant))
        print(RESULT + json.dumps(run_variant(v, args.work, args.peak_tflops)), flush=True)
        return
    if args.grpo_shape:
        print(RESULT + json.dumps(run_grpo(args.grpo_shape, args.work, args.steps)), flush=True)
        return
    if args.write_model:
        write_model(args.write_model, args.work)
        return
    import torch

    if not torch.cuda.is_available() and not args.dry_run:  # no CUDA context is made here: children do the work
        sys.exit("no CUDA device: run with --dry-run to check the path on the CPU (tiny shape)")
    print(f"batch {args.batch_size} x {args.seq} tokens, {args.steps} steps, activation checkpointing "
          f"{args.checkpointing}, attention {args.attn}{'; dry run' if args.dry_run else ''}")  # fmt: skip
    print(f"  {'variant':28s} {'tokens/s':>10s} {'MFU':>7s} {'peak GiB':>9s}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for v in variants(args):
        reason = skip_reason(v)
        if reason is None and not (args.work / f"model-{v.shape}" / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "bench.gpu", "--write-model", v.shape, "--work", str(args.work)],
                           check=True)  # fmt: skip
        row = {"variant": v.name, "skipped": f"skipped: {reason}"} if reason else run_child(v, args)
        if "device" in row and not any("device" in r for r in results):
            peak = peak_flops(row["device"], args.peak_tflops) if row["device"] != "cpu" else None
            print(f"  device: {row['device']}; dense bf16 peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}")
        results.append(row)
        print(fmt(row), flush=True)
    for shape in args.shapes.split(",") if args.grpo == "on" else []:
        row = run_child(shape, args)
        results.append(row)
        print(fmt(row), flush=True)
    print("\n".join(f"  anchor: {a}" for a in ANCHORS))
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
