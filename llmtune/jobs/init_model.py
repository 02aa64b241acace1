"""Build a model from nothing, offline: train a byte-level BPE tokenizer, then a randomly initialised LLaMA.

The result is an ordinary Hugging Face directory that `AutoModelForCausalLM` / `AutoTokenizer` load without
remote code, so tests and tutorials never need the hub.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.outdir import move_into_place, refuse_nonempty
from llmtune.tokenizers.train import check_corpus_files, check_tokenizer, check_vocab_size, iter_corpus, train_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BUILTIN_CORPUS_DOCS = 2000


@dataclass(frozen=True)
class Preset:
    """Architecture of a LLaMA preset; intermediate_size is about 8/3 of hidden_size, as SwiGLU models use."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=172,
                   vocab_size=2048, max_positions=1024),
    "small": Preset(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=688,
                    vocab_size=8192, max_positions=2048),
}  # fmt: skip


@dataclass
class InitResult:
    """What `init_model` built and where it wrote it."""

    out: Path
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    param_count: int
    rule_of_thumb: int


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def llama_param_count(config: Any) -> int:
    """Exact parameter count of `LlamaForCausalLM(config)`, in closed form (biases included when enabled)."""
    h, v, i, layers = config.hidden_size, config.vocab_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_dim = config.num_attention_heads * head_dim
    kv_dim = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    attention = h * q_dim + 2 * h * kv_dim + q_dim * h
    if getattr(config, "attention_bias", False):
        attention += q_dim + 2 * kv_dim + h
    mlp = 3 * h * i + ((2 * i + h) if getattr(config, "mlp_bias", False) else 0)
    per_layer = attention + mlp + 2 * h
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + layers * per_layer + h


def rule_of_thumb_param_count(vocab: int, hidden: int, layers: int) -> int:
    """The usual estimate V·H + 12·H²·L: tied embeddings, multi-head attention, a 4H two-matrix MLP."""
    return vocab * hidden + 12 * hidden * hidden * layers


def llama_config(
    preset: Preset, vocab_size: int, bos_token_id: int = 0, eos_token_id: int = 2, pad_token_id: int = 3
) -> LlamaConfig:
    """LLaMA config for a preset; embeddings untied, as in LLaMA. Default ids are where `train_tokenizer` puts them."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """Random init from `seed`; generation stops at <|im_end|> (end of a turn) or <|endoftext|> (end of a text)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    bos_id = config.bos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=[config.eos_token_id, bos_id], pad_token_id=config.pad_token_id
    )
    return model.eval()


def verify_param_count(model: LlamaForCausalLM) -> int:
    """The closed form must match what torch built; a mismatch is a bug in our formula, not a user error."""
    exact = sum(p.numel() for p in model.parameters())
    expected = llama_param_count(model.config)
    if exact != expected:
        raise AssertionError(f"Parameter count {exact:,} differs from the closed form {expected:,}.")
    return exact


def report_param_count(config: LlamaConfig, exact: int) -> int:
    """Print the exact count beside the V·H + 12·H²·L rule of thumb, and explain the gap term by term."""
    h, v, i, layers = config.hidden_size, config.vocab_size, config.intermediate_size, config.num_hidden_layers
    rough = rule_of_thumb_param_count(v, h, layers)
    kv_dim = config.num_key_value_heads * config.head_dim
    lm_head = 0 if config.tie_word_embeddings else v * h
    attention_gap = layers * (2 * h * kv_dim - 2 * h * h)
    mlp_gap = layers * (3 * h * i - 8 * h * h)
    norms = (2 * layers + 1) * h
    console.info(f"Parameters: {exact:,} (matches the closed form for this LLaMA)")
    gap = exact - rough
    console.info(
        f"Rule of thumb V·H + 12·H²·L = {rough:,}; exact differs by {gap:+,} ({gap / rough:+.1%}): "
        f"untied lm_head {lm_head:+,}, GQA k/v {attention_gap:+,}, SwiGLU I={i} vs 4H {mlp_gap:+,}, norms {norms:+,}"
    )
    return rough


def write_model_dir(out: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, overwrite: bool) -> None:
    """Save into a temp dir beside `out`, then rename it into place, so a failure never leaves a half-written model."""
    refuse_nonempty(out, overwrite, "init-model OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        move_into_place(staging, out)  # gives safetensors' 0600 weights the umask's mode
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
        shutil.rmtree(staging, ignore_errors=True)


def init_model(
    out: Path,
    preset: str = "tiny",
    corpus: Sequence[Path] | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> InitResult:
    """Train a tokenizer on `corpus` (default: the built-in synthetic corpus), build a seeded LLaMA, write both."""
    spec = get_preset(preset)
    asked_vocab = vocab_size is not None
    vocab_size = spec.vocab_size if vocab_size is None else vocab_size
    check_vocab_size(vocab_size)
    refuse_nonempty(out, overwrite, "init-model OUT")
    if corpus:
        check_corpus_files(corpus)
        texts: Iterable[str] = iter_corpus(corpus)
    else:
        from llmtune.data.synth import text_corpus

        texts = text_corpus(BUILTIN_CORPUS_DOCS, seed)
    tokenizer = train_tokenizer(texts, vocab_size, max_length=spec.max_positions)
    check_tokenizer(tokenizer)
    if len(tokenizer) < vocab_size:
        note = f"The corpus supports only {len(tokenizer):,} tokens (asked for {vocab_size:,}); using that."
        (console.warn if asked_vocab else console.info)(note)
    config = llama_config(spec, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = build_model(config, seed)
    exact = verify_param_count(model)
    rough = report_param_count(config, exact)
    write_model_dir(out, model, tokenizer, overwrite)
    console.info(f"Wrote a {preset} LLaMA (vocab {config.vocab_size:,}, seed {seed}) to {out}")
    return InitResult(out=out, model=model, tokenizer=tokenizer, param_count=exact, rule_of_thumb=rough)
