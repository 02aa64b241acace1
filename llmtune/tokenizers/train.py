"""Train a byte-level BPE tokenizer on a corpus, with ChatML special tokens and chat template: any text encodes
and decodes back exactly, and each special token is one id (so chat masks line up)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START_TOKEN, EOS_TOKEN, PAD_TOKEN)
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
MAX_VOCAB_SIZE = 262_144

# ChatML as Qwen writes it, without a default system prompt and without {% generation %} markers.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('Unsupported chat role: ' + message['role'] + ' (use system, user or assistant)') }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(
            f"--vocab-size {vocab_size} is out of range: it must be between {MIN_VOCAB_SIZE} "
            f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes) and {MAX_VOCAB_SIZE}."
        )


def check_corpus_files(paths: Sequence[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise UserError(f"Corpus file {path} does not exist or is not a file.")
        if path.stat().st_size == 0:
            raise UserError(f"Corpus file {path} is empty.")


def iter_corpus(paths: Sequence[Path]) -> Iterator[str]:
    """Texts from plain-text files (line by line) and .jsonl files (the "text" field of each row)."""
    for path in paths:
        count = 0
        with path.open(encoding="utf-8") as handle:
            try:
                for line_no, line in enumerate(handle, start=1):
                    text = _jsonl_text(path, line_no, line) if path.suffix == ".jsonl" else line
                    if text.strip():
                        count += 1
                        yield text
            except UnicodeDecodeError as exc:
                raise UserError(f"Corpus file {path} is not UTF-8 text: {exc.reason}.") from None
        if count == 0:
            raise UserError(f"Corpus file {path} has no text in it.")


def _jsonl_text(path: Path, line_no: int, line: str) -> str:
    if not line.strip():
        return ""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{line_no}: not valid JSON ({exc.msg}).") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise UserError(f'{path}:{line_no}: expected an object with a string "text" field.')
    return row["text"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE with all 256 bytes in the base alphabet, so any text encodes and decodes back exactly."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    check_vocab_size(vocab_size)
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START_TOKEN],
        chat_template=CHATML_TEMPLATE,
        model_max_length=max_length,
        padding_side="right",
    )


def train_sentencepiece_bpe(texts: Iterable[str], vocab_size: int, max_length: int = 1024) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE (Metaspace "▁" words, as LLaMA 2 and Mistral) with the same specials and template;
    characters never seen in training become <unk>, unlike byte-level BPE."""
    from tokenizers.implementations import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    check_vocab_size(vocab_size)
    backend = SentencePieceBPETokenizer(unk_token=UNK_TOKEN)
    backend.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                special_tokens=[*SPECIAL_TOKENS, UNK_TOKEN])  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IM_START_TOKEN],
        chat_template=CHATML_TEMPLATE,
        model_max_length=max_length,
        padding_side="right",
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    """Each special token must be one id, and text must survive encode/decode; otherwise chat masks break."""
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise AssertionError(f"Special token {token} encodes to {ids}, not a single id.")
    if tokenizer.unk_token is not None:  # SentencePiece-style: unseen characters are <unk> by design
        return
    sample = "Hello, world!\n\n  Ünïcödé 日本語 🙂\tend"
    decoded = tokenizer.decode(tokenizer.encode(sample, add_special_tokens=False))
    if decoded != sample:
        raise AssertionError(f"Tokenizer does not round-trip: {sample!r} -> {decoded!r}.")
