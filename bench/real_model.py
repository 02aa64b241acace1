"""A SmolLM-135M-shaped model (issue #13): llmtune sft against a plain TRL script (and LLaMA-Factory, when a venv
with it is given), same LoRA recipe, each run in a fresh process, interleaved; wall time, peak RSS, final train loss
and held-out assistant-token perplexity.

The model is built offline from a LlamaConfig with random weights, stored bfloat16 as the real one is: hidden 576,
9 heads / 3 kv heads, intermediate 1536, vocabulary 49152, tied embeddings; fewer layers than its 30 (--layers) to
keep runs short, which makes the LM head a larger share of a step than on the real model. Its tokenizer is the
byte-level BPE of `llmtune init-model` trained on the built-in corpus (about 1,000 tokens used of the 49,152 rows).
Data: multi-turn chats of 10-500 built-in words (bench.common.spread_conversations); loss on assistant turns.

Recipe (the issue's): LoRA r16/alpha32/dropout 0.05 on all linear layers, batch 8, max_length 256, lr 2e-4, cosine,
40 steps (--quick: 2 layers, 8 steps, one repeat). Perplexity is computed afterwards, in its own process, by one
function for every runner: base in float32 + the saved adapter, assistant tokens of 64 held-out chats.

    python -m bench.real_model [--quick] [--repeats 3] [--variants llmtune,llmtune-fp32,trl]
    LLMTUNE_BENCH_LF_VENV=/work/lf-venv python -m bench.real_model      # adds the LLaMA-Factory run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    spread_conversations,
    thread_env,
    write_jsonl,
)

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 576, 1536, 9, 3, 49152
GOAL_WALL, GOAL_RSS = 0.8, 1.0  # llmtune / LLaMA-Factory


@dataclass(frozen=True)
class Settings:
    layers: int = 6
    steps: int = 40
    batch_size: int = 8
    max_length: int = 256
    lr: float = 2e-4
    seed: int = 42
    n_train: int = 1000
    n_heldout: int = 64
    threads: int = 0


# llmtune variants: recipe overrides on top of the issue's recipe
LLMTUNE_VARIANTS: dict[str, dict[str, Any]] = {
    "llmtune": {},
    "llmtune-fp32": {"model": {"dtype": "float32"}},
    "llmtune-bf16": {"model": {"dtype": "bfloat16"}},
    "llmtune-gc": {"train": {"gradient_checkpointing": True}},
    "llmtune-gc-half": {"train": {"gradient_checkpointing": 0.5}},
    "llmtune-peft": {"train": {"cpu_fast_lora": False}},
    "llmtune-grouped": {"train": {"extra": {"train_sampling_strategy": "group_by_length"}}},
    "llmtune-nodropout": {"method": {"lora": {"dropout": 0.0}}},
    "llmtune-trlhead": {"train": {"cpu_fused_head": False}},
}
OTHER_VARIANTS = ("trl", "trl-fp32", "lf")


def ensure_model(layers: int, work: Path = WORK) -> Path:
    """The realistic-shape model dir (random init, bf16 safetensors, the init-model tokenizer), built once."""
    out = work / f"smollm-shape-{layers}l"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import LlamaConfig

    from llmtune.data.synth import text_corpus
    from llmtune.jobs.init_model import BUILTIN_CORPUS_DOCS, build_model
    from llmtune.tokenizers.train import check_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(text_corpus(BUILTIN_CORPUS_DOCS, 0), VOCAB, max_length=2048)
    check_tokenizer(tokenizer)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = build_model(config, seed=0).to(torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def ensure_data(s: Settings, work: Path = WORK) -> tuple[Path, Path]:
    """Training and held-out chats (different seeds), written once."""
    root = work / "real-model-data"
    train, heldout = root / f"train-{s.n_train}.jsonl", root / f"heldout-{s.n_heldout}.jsonl"
    if not train.is_file():
        write_jsonl(train, spread_conversations(s.n_train, seed=0))
    if not heldout.is_file():
        write_jsonl(heldout, spread_conversations(s.n_heldout, seed=12345))
    return train, heldout


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def llmtune_argv(variant: str, model: Path, data: Path, s: Settings, run_dir: Path) -> tuple[list[str], dict]:
    import yaml

    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model)},
        "method": {"kind": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}},
        "data": {"train": [{"path": str(data)}], "max_length": s.max_length, "cache_dir": str(run_dir / "cache"),
                 "bad_rows": "skip"},
        "train": {"max_steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "scheduler": "cosine",
                  "logging_steps": min(10, s.steps), "save_steps": 100_000, "seed": s.seed},
        "output": {"dir": str(run_dir / "out"), "overwrite": True},
    }  # fmt: skip
    overrides = dict(LLMTUNE_VARIANTS[variant])
    env = overrides.pop("_env", {})
    recipe = _merge(recipe, overrides)
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    argv = [sys.executable, "-m", "bench.llmtune_timed", str(run_dir / "clock.txt"), "sft", "--recipe", str(path)]
    return argv, env


def trl_argv(variant: str, model: Path, ordered: Path, s: Settings, run_dir: Path) -> tuple[list[str], dict]:
    argv = [sys.executable, "-m", "bench.trl_baseline", "--model", str(model), "--data", str(ordered)]
    argv += ["--out", str(run_dir / "out"), "--max-length", str(s.max_length), "--batch-size", str(s.batch_size)]
    argv += ["--lr", str(s.lr), "--steps", str(s.steps), "--seed", str(s.seed), "--clock", str(run_dir / "clock.txt")]
    argv += ["--dtype", "float32" if variant == "trl-fp32" else "bfloat16", "--logging-steps", str(min(10, s.steps))]
    return argv, {"HF_DATASETS_CACHE": str(run_dir / "hf-datasets")}


def lf_argv(venv: Path, model: Path, data: Path, s: Settings, run_dir: Path) -> tuple[list[str], dict]:
    """LLaMA-Factory with its own defaults except the recipe's keys (it turns gradient checkpointing on, and picks
    float32 on a machine without a GPU)."""
    import yaml

    data_dir = run_dir / "lf-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(data, data_dir / "train.jsonl")
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}  # fmt: skip
    info = {"bench": {"file_name": "train.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                      "tags": tags}}  # fmt: skip
    (data_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target": "all",
        "dataset": "bench", "dataset_dir": str(data_dir), "template": "chatml", "cutoff_len": s.max_length,
        "overwrite_cache": True, "output_dir": str(run_dir / "out"), "overwrite_output_dir": True,
        "logging_steps": min(10, s.steps), "save_strategy": "no", "per_device_train_batch_size": s.batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": s.lr, "max_steps": s.steps,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "report_to": "none", "seed": s.seed,
    }  # fmt: skip
    path = run_dir / "lf.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {"DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(run_dir / "hf-datasets"),
           "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}  # fmt: skip
    return [str(venv / "bin" / "llamafactory-cli"), "train", str(path)], env


def final_loss(variant: str, out: Path) -> float | None:
    """The last logged training loss (mean over the last logging window)."""
    if variant.startswith("llmtune"):
        return json.loads((out / "summary.json").read_text(encoding="utf-8")).get("final_loss")
    if variant.startswith("trl"):
        history = json.loads((out / "log_history.json").read_text(encoding="utf-8"))
    else:
        lines = (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
        history = [json.loads(line) for line in lines if line.strip()]
    return next((row["loss"] for row in reversed(history) if "loss" in row), None)


def heldout_ppl(model: str, adapter: str, data: str, max_length: int) -> dict[str, float]:
    """Perplexity of the assistant tokens (content and <|im_end|>) of held-out chats: base float32 + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.trl_baseline import CHATML_WITH_GENERATION

    tokenizer = AutoTokenizer.from_pretrained(model)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    net = PeftModel.from_pretrained(base, adapter).eval()
    nll, count = 0.0, 0
    rows = [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]
    with torch.no_grad():
        for row in rows:
            enc = tokenizer.apply_chat_template(row["messages"], chat_template=CHATML_WITH_GENERATION, tokenize=True,
                                                return_dict=True, return_assistant_tokens_mask=True)  # fmt: skip
            ids = torch.tensor(enc["input_ids"][:max_length])
            mask = torch.tensor(enc["assistant_masks"][:max_length], dtype=torch.bool)[1:]
            logits = net(input_ids=ids[None]).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[1:, None]).squeeze(1)
            nll -= float(logp[mask].sum())
            count += int(mask.sum())
    return {"ppl": math.exp(nll / max(count, 1)), "tokens": count}


def run_variant(variant: str, model: Path, data: Path, heldout: Path, s: Settings, run_dir: Path,
                lf_venv: Path | None) -> dict[str, float]:  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if variant in LLMTUNE_VARIANTS:
        argv, env = llmtune_argv(variant, model, data, s, run_dir)
    elif variant.startswith("trl"):
        from bench.sft_overhead import trl_order

        argv, env = trl_argv(variant, model, trl_order(data, s.seed, run_dir / "train.trl-order.jsonl"), s, run_dir)
    else:
        assert lf_venv is not None
        argv, env = lf_argv(lf_venv, model, data, s, run_dir)
    child = run_child(argv, run_dir / "log.txt", {**env, **thread_env(s.threads)})
    check_child(child, f"{variant} run in {run_dir}")
    got = {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "rss_mib": child.max_rss_mib}
    ends, cpu = read_clock(run_dir / "clock.txt")
    if len(ends) >= 2:  # steps 2..N: without the first step's warm-up
        got["train_s"], got["train_cpu_s"] = ends[-1] - ends[0], cpu[-1] - cpu[0]
    got["loss"] = final_loss(variant, run_dir / "out") or float("nan")
    ev = run_child([sys.executable, "-m", "bench.real_model", "--ppl", str(model), str(run_dir / "out"), str(heldout),
                    str(s.max_length)], run_dir / "ppl.txt")  # fmt: skip
    check_child(ev, f"perplexity of {variant}")
    lines = (run_dir / "ppl.txt").read_text(encoding="utf-8").splitlines()
    got["ppl"] = json.loads(next(line for line in reversed(lines) if line.startswith("{")))["ppl"]
    return got


def measure(variants: list[str], repeats: int, s: Settings, lf_venv: Path | None) -> dict[str, dict[str, list[float]]]:
    model = ensure_model(s.layers)
    data, heldout = ensure_data(s)
    root = WORK / "runs" / f"real-model-{s.layers}l"
    figures: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for rep in range(repeats):
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            got = run_variant(variant, model, data, heldout, s, root / variant, lf_venv)
            for key, value in got.items():
                figures[variant].setdefault(key, []).append(value)
            print(f"  rep {rep + 1} {variant:15s} " + "  ".join(f"{k} {v:.4g}" for k, v in got.items()),
                  f"(load {load_average()})", flush=True)  # fmt: skip
    return figures


KEYS = (
    ("wall_s", "wall s"),
    ("cpu_s", "CPU s"),
    ("train_s", "steps 2..N s"),
    ("train_cpu_s", "steps 2..N CPU s"),
    ("rss_mib", "peak RSS MiB"),
    ("loss", "final loss"),
    ("ppl", "held-out ppl"),
)


def report(figures: dict, repeats: int) -> list[dict]:
    print(f"\nmedian over {repeats} repeats (min-max)")
    for variant, fig in figures.items():
        cells = [f"{label} {median(fig[k]):.4g} ({spread(fig[k])})" for k, label in KEYS if fig.get(k)]
        print(f"  {variant:15s} " + "  ".join(cells))
    rows = []
    ref = "lf" if "lf" in figures else ("trl" if "trl" in figures else None)
    if ref is None or "llmtune" not in figures:
        return rows
    for key, label in KEYS:
        if not figures["llmtune"].get(key) or not figures[ref].get(key):
            continue
        ratio = median(figures["llmtune"][key]) / median(figures[ref][key])
        goal = (
            {"wall_s": f"<= {GOAL_WALL}", "rss_mib": f"<= {GOAL_RSS}"}.get(key, "(info)") if ref == "lf" else "(info)"
        )
        ok = ratio <= GOAL_WALL if key == "wall_s" and ref == "lf" else (
            ratio <= GOAL_RSS if key == "rss_mib" and ref == "lf" else None)  # fmt: skip
        rows.append(result_row(f"real model: {label}, llmtune / {ref}", ratio, goal, ok))
        print(f"  {label}: llmtune / {ref} = {ratio:.3f} (goal {goal})")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 layers, 8 steps, 16 held-out chats, one repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--heldout", type=int, default=64, help="held-out chats for the perplexity")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per run (0: the library default); 1 makes CPU-time figures steady under load",
    )
    p.add_argument("--variants", default="llmtune,llmtune-fp32,trl",
                   help=f"comma-separated, among {', '.join([*LLMTUNE_VARIANTS, *OTHER_VARIANTS])}")  # fmt: skip
    p.add_argument("--ppl", nargs=4, metavar=("MODEL", "ADAPTER", "DATA", "MAX_LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ppl:
        print(json.dumps(heldout_ppl(*args.ppl[:3], int(args.ppl[3]))))
        return
    s = Settings(layers=args.layers, steps=args.steps, n_heldout=args.heldout, threads=args.threads)
    if args.quick:
        s = Settings(layers=2, steps=8, n_heldout=16, threads=args.threads)
    repeats = 1 if args.quick else args.repeats
    variants = args.variants.split(",")
    lf = os.environ.get("LLMTUNE_BENCH_LF_VENV")
    if lf and "lf" not in variants:
        variants.append("lf")
    if "lf" in variants and not lf:
        sys.exit("the lf variant needs LLMTUNE_BENCH_LF_VENV=<a venv with llamafactory installed>")
    print(f"real model: {json.dumps(asdict(s))}; variants {variants}; load {load_average()}", flush=True)
    figures = measure(variants, repeats, s, Path(lf) if lf else None)
    emit("real_model", report(figures, repeats), settings=asdict(s))


if __name__ == "__main__":
    main()
