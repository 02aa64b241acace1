"""Decoding for `llmtune generate` (and the chat loop in llmtune.infer.chat): one GenerationConfig built from the
flags, batched prompts with left padding.

`--temperature 0` (the default) is greedy or, with `--num-beams N`, beam search; a temperature above 0 samples
(with `--top-k` / `--top-p` if given). Generation stops at the model's eos ids and at the chat template's
end-of-turn token; the KV cache is always on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.errors import UserError
from llmtune.infer.prompts import Prompt

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class DecodeOptions:
    """The decoding flags the CLI exposes."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: int | None = None

    def check(self) -> None:
        """Refuse contradictory or out-of-range flags before any model is loaded."""
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise UserError(
                f"--temperature must be 0 (greedy / beam search) or above (sampling); got {self.temperature}"
            )
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise UserError("--top-k and --top-p apply to sampling; set --temperature above 0 (0 means greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1]; got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1; got {self.top_k}")
        if self.num_beams < 1 or self.repetition_penalty <= 0:
            raise UserError("--num-beams must be at least 1 and --repetition-penalty above 0")
        if self.num_return_sequences > max(self.num_beams, 1) and self.temperature == 0:
            raise UserError(
                f"--num-return-sequences {self.num_return_sequences} needs as many beams (--num-beams) or sampling"
            )


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Model's generation eos ids, the tokenizer's eos, and the chat template's end-of-turn token."""
    ids: list[int] = []
    for eos in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        ids.extend([eos] if isinstance(eos, int) else list(eos or []))
    if tokenizer.chat_template:
        from llmtune.data.templates import end_of_turn_ids

        with contextlib.suppress(UserError):
            ids.extend(end_of_turn_ids(tokenizer, tokenizer.chat_template)[-1:])
    return list(dict.fromkeys(ids))


def set_stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Make the model's generation_config stop at every id of `stop_ids` (and pad with the tokenizer's pad), so a
    saved model or export stops at the end of a turn in any runtime that reads it."""
    ids = stop_ids(model, tokenizer)
    model.generation_config.eos_token_id = ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ids


def stop_counts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                max_new_tokens: int = 32, synced: bool = False) -> tuple[int, int]:  # fmt: skip
    """(prompts whose greedy answer hit a stop id within max_new_tokens, prompts tried). `synced`: the weights are
    split over the processes and every one of them calls this (transformers' synced_gpus: none stops early)."""
    import torch

    config = build_generation_config(model, tokenizer, DecodeOptions(max_new_tokens=max_new_tokens))
    stops = set(config.eos_token_id)
    batch = encode_left_padded(
        tokenizer, render_prompts(tokenizer, prompts, True), True, next(model.parameters()).device
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ids = model.generate(**batch, generation_config=config, synced_gpus=synced)
    finally:
        model.train(was_training)
    new = ids[:, batch["input_ids"].shape[1] :].tolist()
    return sum(any(t in stops for t in row) for row in new), len(new)


def check_stops(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                what: str, max_new_tokens: int = 32, synced: bool = False) -> bool:  # fmt: skip
    """Warn, with the numbers, when greedy generation on a few prompts runs to max_new_tokens without stopping."""
    from llmtune import console

    if not tokenizer.chat_template or not prompts:
        return True
    stopped, tried = stop_counts(model, tokenizer, prompts, max_new_tokens, synced)
    if stopped == tried:
        return True
    names = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} ({i})" for i in stop_ids(model, tokenizer))
    console.warn(
        f"{what}: greedy generation stopped within {max_new_tokens} new tokens on only {stopped} of {tried} training "
        f"prompts (stop ids: {names}); the model may not have learned to end its turn: train longer, check that "
        "the data's answers end with the template's end-of-turn token, or raise max_new_tokens when you generate"
    )
    return False


def build_generation_config(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, options: DecodeOptions
) -> GenerationConfig:
    """The model's generation config with the flags applied; sampling iff temperature > 0."""
    import copy

    options.check()
    config = copy.deepcopy(model.generation_config)
    sample = options.temperature > 0
    config.update(
        do_sample=sample,
        temperature=options.temperature if sample else None,
        top_k=(options.top_k or 0) if sample else None,  # 0: no top-k cut (transformers would otherwise apply 50)
        top_p=options.top_p if sample else None,
        num_beams=options.num_beams,
        repetition_penalty=options.repetition_penalty,
        num_return_sequences=options.num_return_sequences,
        max_new_tokens=options.max_new_tokens,
        max_length=None,
        eos_token_id=stop_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    return config


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template:
        raise UserError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; pass --raw to generate from plain text"
        )


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat: bool) -> list[str]:
    """Prompt texts: with `chat`, a string is one user turn and a message list is rendered with the template
    and the generation prompt; without it strings are used raw."""
    if not chat:
        return [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
    require_chat_template(tokenizer)
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]


def encode_left_padded(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], chat: bool, device: Any) -> dict:
    """input_ids and attention_mask, padded on the left so every prompt ends where generation begins."""
    batch = tokenizer(list(texts), padding=True, padding_side="left", add_special_tokens=not chat, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    options: DecodeOptions = DecodeOptions(),
    *,
    chat: bool = True,
    batch_size: int = 16,
) -> list[list[str]]:
    """For each prompt, its `num_return_sequences` completions (new text only, special tokens removed)."""
    import torch
    from transformers import set_seed

    config = build_generation_config(model, tokenizer, options)
    if options.seed is not None:
        set_seed(options.seed)
    texts = render_prompts(tokenizer, prompts, chat)
    device = next(model.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(texts), batch_size):
        batch = encode_left_padded(tokenizer, texts[start : start + batch_size], chat, device)
        with torch.inference_mode():
            ids = model.generate(**batch, generation_config=config)
        new = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        k = options.num_return_sequences
        out.extend(new[i : i + k] for i in range(0, len(new), k))
    return out


def write_generations(prompts: Sequence[Prompt], outputs: list[list[str]], out: Path | None) -> None:
    """Print each prompt's completions; with `out`, also write JSONL rows {"prompt", "completions"}."""
    import json

    from llmtune import console

    shown = console.stdout()
    for prompt, completions in zip(prompts, outputs, strict=True):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        shown.print(f"[bold]>>> {escape_markup(text)}[/bold]")
        for completion in completions:
            shown.print(escape_markup(completion))
    if out is not None:
        rows = [{"prompt": p, "completions": c} for p, c in zip(prompts, outputs, strict=True)]
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        console.info(f"wrote {out}", markup=False)


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)
