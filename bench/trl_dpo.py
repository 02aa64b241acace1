"""The plain TRL DPO script a user would write by hand, the baseline of bench/dpo_real.py.

AutoModelForCausalLM in the checkpoint's stored dtype + AutoTokenizer + peft LoraConfig + DPOTrainer(DPOConfig(...))
with ref_model=None (with a peft adapter, TRL's reference is the base with the adapter disabled). The recipe's
settings spelled out: LoRA r=16/alpha=32/dropout 0.05 on all linear layers, sigmoid loss, beta 0.1, cosine schedule,
no warmup, no mixed precision and no activation checkpointing on CPU (DPOConfig's own default turns checkpointing on).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a jsonl file of {'prompt', 'chosen', 'rejected'} message rows")
    p.add_argument("--out", required=True)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--clock", help="append each step's end time here (bench.common.step_clock)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")  # the stored dtype (bfloat16)
    dataset = load_dataset("json", data_files=args.data, split="train")
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        beta=args.beta,
        loss_type="sigmoid",
        max_length=args.max_length,
        seed=args.seed,
        data_seed=args.seed,
        bf16=False,
        activation_checkpointing=False,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)  # fmt: skip
    if args.clock:
        from bench.common import step_clock

        trainer.add_callback(step_clock(args.clock))
    trainer.train()
    trainer.save_model(args.out)
    Path(args.out, "log_history.json").write_text(json.dumps(trainer.state.log_history), encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
