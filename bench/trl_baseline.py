"""The plain TRL script a user would write by hand: the baseline llmtune's overhead and memory are measured against.

AutoModelForCausalLM + AutoTokenizer + peft LoraConfig + SFTTrainer(SFTConfig(...)), with llmtune's defaults spelled
out (LoRA r=16/alpha=32/dropout 0.05 on all linear layers, cosine schedule, no warmup, fp32 on CPU, no activation
checkpointing; SFTConfig's own defaults would turn bf16 and checkpointing on). The loss is on assistant turns only,
through TRL's own mechanism (`assistant_only_loss`), which needs `{% generation %}` markers: the ChatML template
below renders the same text as the model's own, with the assistant's content and <|im_end|> marked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

CHATML_WITH_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a jsonl file of {'messages': [...]} rows")
    p.add_argument("--out", required=True)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--clock", help="append each step's end time here (bench.common.step_clock)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype")
    return p.parse_args(argv)


def build_trainer(args: argparse.Namespace, callbacks: list[Any] | None = None) -> Any:
    """The SFTTrainer, ready to train (its dataset already tokenized by TRL)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.chat_template = CHATML_WITH_GENERATION
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, getattr(args, "dtype", "float32")))
    dataset = load_dataset("json", data_files=args.data, split="train")
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        seed=args.seed,
        data_seed=args.seed,
        max_length=args.max_length,
        assistant_only_loss=True,
        bf16=False,
        activation_checkpointing=False,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    callbacks = None
    if args.clock:
        from bench.common import step_clock

        callbacks = [step_clock(args.clock)]
    trainer = build_trainer(args, callbacks)
    started = time.perf_counter()
    trainer.train()
    trainer.save_model(args.out)
    Path(args.out, "log_history.json").write_text(json.dumps(trainer.state.log_history), encoding="utf-8")
    Path(args.out, "done.txt").write_text(f"train+save {time.perf_counter() - started:.3f}s\n", encoding="utf-8")


if __name__ == "__main__":
    main()
