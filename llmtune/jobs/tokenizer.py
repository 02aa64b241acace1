"""`llmtune tokenizer train` and `llmtune tokenizer extend`: tokenizers from corpora in any of our row formats.

extend writes a whole model directory: the base model with its embeddings and LM head resized to the extended
vocabulary, each new row the mean of the base rows of the sub-tokens the new token replaces (so a new token starts
out meaning what its pieces meant), and every old row untouched, so the model's outputs on old ids do not change.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.data.clean.pipeline import parsed_rows
from llmtune.errors import UserError
from llmtune.outdir import move_into_place, refuse_nonempty

CHECK_TEXTS = 2000


def corpus_texts(files: Sequence[Path]) -> Iterator[str]:
    """The text of every row of each file (text, chat, preference or prompt rows; .txt paragraphs)."""
    for path in files:
        if not path.is_file():
            raise UserError(f"--corpus: {path} is not a file")
        for _where, _fmt, _raw, text in parsed_rows(path, str(path)):
            yield text


def tokens_per_char(tokenizer: Any, texts: Sequence[str]) -> float:
    tokens = sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return tokens / max(1, sum(len(t) for t in texts))


def train(files: Sequence[Path], out: Path, *, vocab_size: int, kind: str, overwrite: bool) -> Any:
    """Train a tokenizer (byte-level BPE, or SentencePiece-style BPE) with ChatML specials and template."""
    from llmtune.tokenizers.train import check_tokenizer, train_sentencepiece_bpe, train_tokenizer

    refuse_nonempty(out, overwrite, "tokenizer train --out")
    texts = list(corpus_texts(files))
    build = train_tokenizer if kind == "bpe" else train_sentencepiece_bpe
    tokenizer = build(texts, vocab_size)
    check_tokenizer(tokenizer)
    tokenizer.save_pretrained(str(out))
    console.info(f"wrote {out}: {len(tokenizer):,} tokens, {tokens_per_char(tokenizer, texts[:CHECK_TEXTS]):.3f} "
                 f"tokens per character on the corpus", markup=False)  # fmt: skip
    return tokenizer


def _new_rows(base_tok: Any, extended_tok: Any, new_ids: Sequence[int]) -> list[list[int]]:
    """For each new token, the base ids of the text it stands for (the sub-tokens it replaces)."""
    pieces = []
    for token_id in new_ids:
        text = extended_tok.decode([token_id])
        pieces.append(base_tok.encode(text, add_special_tokens=False))
    return pieces


def resize_model(model: Any, pieces: Sequence[list[int]], new_ids: Sequence[int]) -> None:
    """Resize embeddings (and an untied LM head) and set each new row to the mean of its pieces' rows."""
    import torch

    old_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(max(old_rows, max(new_ids) + 1), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            for token_id, ids in zip(new_ids, pieces, strict=True):
                weight[token_id] = weight[ids].mean(0)


def extend(base: str, files: Sequence[Path], add: int, out: Path, *, overwrite: bool) -> dict[str, Any]:
    """`llmtune tokenizer extend`: extended tokenizer + resized model in `out`; returns the figures printed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from llmtune.hub.local import resolve_dir
    from llmtune.modeling import refuse_remote_code
    from llmtune.tokenizers.extend import check_extension, extend_tokenizer

    refuse_nonempty(out, overwrite, "tokenizer extend --out")
    base_dir = Path(resolve_dir(base, "main", None, "BASE"))
    refuse_remote_code(base_dir, False, "extend only a tokenizer and model that need no code of their own")
    if any(base_dir.glob("*.bin")) and not any(base_dir.glob("*.safetensors")):
        raise UserError(
            f"BASE {base}: has only pickle weights (.bin), which can run code when loaded; convert them to "
            "safetensors first"
        )
    base_tok = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    if not isinstance(base_tok, PreTrainedTokenizerFast):
        raise UserError(f"BASE {base}: has no fast tokenizer (tokenizer.json); only those can be extended")
    texts = list(corpus_texts(files))
    extension = extend_tokenizer(base_tok.backend_tokenizer.to_str(), texts, add, where=f"BASE {base}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        base_tok.save_pretrained(str(staging))
        (staging / "tokenizer.json").write_text(extension.tokenizer_json, encoding="utf-8")
        extended_tok = AutoTokenizer.from_pretrained(str(staging), trust_remote_code=False)
        sample = texts[:CHECK_TEXTS]
        used = check_extension(base_tok, extended_tok, sample, extension.new_ids)
        has_weights = any(base_dir.glob("*.safetensors"))  # pickle (.bin) weights can run code: never loaded here
        if has_weights:
            model = AutoModelForCausalLM.from_pretrained(
                str(base_dir), dtype="auto", trust_remote_code=False, use_safetensors=True
            )
            resize_model(model, _new_rows(base_tok, extended_tok, extension.new_ids), extension.new_ids)
            model.save_pretrained(str(staging))
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    figures = {
        "added": len(extension.new_ids),
        "requested": add,
        "rows_using_new_tokens": used,
        "checked_rows": len(sample),
        "tokens_per_char_before": tokens_per_char(base_tok, sample),
        "tokens_per_char_after": tokens_per_char(extended_tok, sample),
        "model_resized": has_weights,
    }
    short = f" (the corpus gave only {figures['added']})" if figures["added"] < add else ""
    console.info(f"added {figures['added']:,} tokens{short}: {len(base_tok):,} -> {len(extended_tok):,}; "
                 f"tokens per character on the corpus {figures['tokens_per_char_before']:.3f} -> "
                 f"{figures['tokens_per_char_after']:.3f}; {used:,} of {len(sample):,} rows use a new token",
                 markup=False)  # fmt: skip
    console.info(f"wrote {out}" + ("" if has_weights else " (tokenizer only: BASE has no weights)"), markup=False)
    return figures
