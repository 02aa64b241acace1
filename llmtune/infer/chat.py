"""`llmtune chat`: an interactive loop over the chat template, answers streamed; its input and output streams are
injectable, so tests drive it."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from llmtune.data.formats import Messages
from llmtune.infer.generate import DecodeOptions, build_generation_config, encode_left_padded, require_chat_template

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

CHAT_HELP = "commands: /reset starts a new conversation, /exit quits (so does an empty input stream)"


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
