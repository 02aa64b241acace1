"""The plain TRL GRPO script a user would write by hand, the baseline of bench/grpo_overhead.py: AutoModelForCausalLM
+ AutoTokenizer + peft LoraConfig + GRPOTrainer(GRPOConfig(...)) with a length reward, llmtune's defaults spelled out
(LoRA r=16/alpha=32/dropout 0.05 on all linear layers, cosine schedule, fp32 on CPU, beta 0.04, 4 generations).

Also the generation timer both variants share: with --gen-clock (or BENCH_GEN_CLOCK in the environment, for
llmtune) every `generate` call appends its duration to that file.
"""

from __future__ import annotations

import argparse
import os
import time


def time_generate(path: str) -> None:
    """Append each GenerationMixin.generate call's wall time to `path` (the share of a step spent sampling)."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        started = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.time() - started:.6f}\n")

    GenerationMixin.generate = generate


def length_band(completions, **_):
    """The same reward as llmtune's `length: [0, 20]`."""
    texts = ["".join(m["content"] for m in c) for c in completions]
    return [max(0.0, 1.0 - max(0 - len(t), len(t) - 20, 0) / 20) for t in texts]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--model", "--data", "--out", "--clock", "--gen-clock"):
        p.add_argument(name)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.gen_clock:
        time_generate(args.gen_clock)
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from bench.common import step_clock

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8, learning_rate=1e-3,
        lr_scheduler_type="cosine", seed=args.seed, data_seed=args.seed, logging_steps=10, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, num_generations=4, max_completion_length=16, beta=0.04,
        temperature=1.0, disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=[length_band], args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)  # fmt: skip
    if args.clock:
        trainer.add_callback(step_clock(args.clock))
    trainer.train()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
