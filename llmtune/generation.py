"""Decoding for `llmtune generate` and `llmtune chat`: one GenerationConfig built from the flags, batched prompts
with left padding, and an interactive chat loop whose input and output streams are injectable (tests drive it).

`--temperature 0` (the default) is greedy or, with `--num-beams N`, beam search; a temperature above 0 samples
(with `--top-k` / `--top-p` if given). Generation stops at the model's eos ids and at the chat template's
end-of-turn token; the KV cache is always on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from llmtune.errors import UserError, not_utf8

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]
Prompt = str | Messages
CHAT_HELP = "commands: /reset starts a new conversation, /exit quits (so does an empty input stream)"


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
        top_k=options.top_k if sample else None,
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


def _streamer(tokenizer: PreTrainedTokenizerBase, output: TextIO) -> Any:
    from transformers import TextStreamer

    class StreamTo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            output.write(text + ("\n" if stream_end else ""))
            output.flush()

    return StreamTo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _fit_context(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, history: Messages, budget: int
) -> Messages:
    """Drop the oldest exchanges (never the system message or the last user turn) until the prompt fits."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    kept = list(history)
    while limit is not None:
        ids = tokenizer.apply_chat_template(kept, add_generation_prompt=True, tokenize=True, return_dict=False)
        first = 1 if kept and kept[0]["role"] == "system" else 0
        if len(ids) + budget <= limit or len(kept) - first <= 1:
            break
        del kept[first : first + 2]
    return kept


def reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    history: Messages,
    config: GenerationConfig,
    output: TextIO | None = None,
) -> str:
    """The assistant's next turn for a conversation; streamed to `output` as it is produced when given."""
    import torch

    text = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    batch = encode_left_padded(tokenizer, [text], True, next(model.parameters()).device)
    streamer = _streamer(tokenizer, output) if output is not None and config.num_beams == 1 else None
    with torch.inference_mode():
        ids = model.generate(**batch, generation_config=config, streamer=streamer)
    answer = tokenizer.decode(ids[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    if output is not None and streamer is None:
        output.write(answer + "\n")
    return answer.strip()


def chat_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    options: DecodeOptions = DecodeOptions(),
    *,
    system: str | None = None,
    input_stream: TextIO | None = None,
    output_stream: TextIO | None = None,
    prompt: str = ">>> ",
) -> Messages:
    """Read a line, answer it with the conversation so far (chat template), repeat; /reset and /exit are commands.

    Streams default to sys.stdin / sys.stdout at call time. Returns the final conversation (after the last /reset)."""
    input_stream = input_stream or sys.stdin
    output_stream = output_stream or sys.stdout
    require_chat_template(tokenizer)
    config = build_generation_config(model, tokenizer, replace(options, num_return_sequences=1))
    if options.seed is not None:
        from transformers import set_seed

        set_seed(options.seed)
    start: Messages = [{"role": "system", "content": system}] if system else []
    history = list(start)
    output_stream.write(f"{CHAT_HELP}\n")
    while True:
        output_stream.write(prompt)
        output_stream.flush()
        line = input_stream.readline()
        if not line:
            output_stream.write("\n")
            break
        text = line.strip()
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            output_stream.write("(new conversation)\n")
            continue
        if not text or text.startswith("/"):
            output_stream.write(f"{CHAT_HELP}\n" if text else "")
            continue
        history = _fit_context(model, tokenizer, [*history, {"role": "user", "content": text}], options.max_new_tokens)
        history.append({"role": "assistant", "content": reply(model, tokenizer, history, config, output_stream)})
    return history


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts from a file: .txt one per line; .jsonl rows with "prompt" (text) or "messages" (a trailing assistant
    turn, as in eval files, is dropped so the model answers it)."""
    import json

    if not path.is_file():
        raise UserError(f"--prompts: {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise not_utf8(f"--prompts {path}", path.read_bytes(), "re-save the file as UTF-8") from None
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts: list[Prompt] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc})") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            prompts.append(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
            messages = row["messages"]
            prompts.append(messages[:-1] if messages[-1].get("role") == "assistant" else messages)
        else:
            raise UserError(f'{path}:{n}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
    return prompts


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
