"""`llmtune export --format gguf`: write a merged Llama-family model as one GGUF file, with our own small writer on
the `gguf` package (GGUFWriter for the container, gguf.quants for the block formats).

What goes in: the architecture keys llama.cpp reads for `llama` (Llama, Mistral) and `qwen2`; the tensors under
gguf's own name map, q/k rows permuted into llama.cpp's rotary layout for `llama`; the byte-level BPE tokenizer as
gpt2-style `tokenizer.ggml.*` keys (tokens, merges, token types, bos/eos/pad ids, and as eot the chat template's
end-of-turn id) and the chat template. 2-D weights take the chosen type; a weight whose rows do not split into the
type's blocks, and every 1-D tensor, is written as f16 / f32 (as llama.cpp's own converter does). Nothing time- or
path-dependent is written, so the same model gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune.errors import UserError

QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
"""--quant choices: plain floats, then the block formats gguf.quants can write, most precise first."""
ARCH_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PRE_TOKENIZERS = {"qwen2": "qwen2", "llama-bpe": "llama-bpe"}
"""GGUF pre-tokenizer names whose split regex we recognise (the reader's table gives the regex)."""


def _arch(config: Any) -> str:
    arch = ARCH_OF_MODEL_TYPE.get(config.model_type)
    if arch is None:
        raise UserError(
            f"--format gguf: model type {config.model_type!r} is not supported; GGUF export covers "
            f"{', '.join(ARCH_OF_MODEL_TYPE)} (export the merged safetensors and use llama.cpp's converter)"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"--format gguf: rope scaling {rope.get('rope_type')!r} is not supported yet")
    return arch


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the way the tokenizer splits text before BPE; refuse what is not byte-level."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    splits = [p["pattern"].get("Regex") for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and any(p.get("type") == "ByteLevel" for p in parts):
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        for name in PRE_TOKENIZERS:
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == splits[0]:
                return name
    raise UserError(
        "--format gguf: only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 style) are written; this tokenizer's "
        f"pre-tokenizer is {json.dumps(pre)[:120]}"
    )


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """tokens (by id, padded to the model's vocab_size), merges, token types and the pre-tokenizer name."""
    from gguf import TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"--format gguf: the tokenizer is {model.get('type')}, not byte-level BPE")
    pre = _pre_tokenizer(spec)
    tokens: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = dict.fromkeys(tokens, int(TokenType.NORMAL))
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = int(TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED)
    size = max(vocab_size, max(tokens) + 1)
    for i in range(size):
        if i not in tokens:
            tokens[i], types[i] = f"[PAD{i}]", int(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": [tokens[i] for i in range(size)], "types": [types[i] for i in range(size)], "merges": merges,
            "pre": pre}  # fmt: skip


def _permute_rotary(weight: Any, n_head: int) -> Any:
    """HF stores q/k rows as two halves per head; llama.cpp's `llama` expects them interleaved in pairs."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensors(model: Any, arch: str) -> list[tuple[str, Any]]:
    """(gguf name, float32 numpy array) for every weight, in the model's own order."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                        config.num_hidden_layers)  # fmt: skip
    out = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        target = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"--format gguf: no GGUF name for the weight {name!r} of this {config.model_type} model")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            data = _permute_rotary(data, config.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            data = _permute_rotary(data, config.num_key_value_heads)
        out.append((target, data))
    return out


def _encode(data: Any, quant: str) -> tuple[Any, Any]:
    """(array to write, ggml type): 1-D in f32; a 2-D weight in `quant`, or f16 when its rows do not fit blocks."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    if data.ndim < 2 or quant == "f32":
        return data.astype(np.float32), GGMLQuantizationType.F32
    qtype = GGMLQuantizationType[quant.upper()]
    if data.shape[-1] % GGML_QUANT_SIZES[qtype][0] != 0:
        qtype = GGMLQuantizationType.F16
    return quants.quantize(data, qtype), qtype


def _file_type(quant: str) -> int:
    from gguf import LlamaFileType

    return int(LlamaFileType.ALL_F32 if quant == "f32" else LlamaFileType[f"MOSTLY_{quant.upper()}"])


def _add_architecture(writer: Any, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token the chat template ends an assistant turn with (llama.cpp's eot: generation stops there)."""
    import contextlib

    from llmtune.data.templates import end_of_turn_ids

    if not tokenizer.chat_template:
        return None
    with contextlib.suppress(UserError):
        ends = end_of_turn_ids(tokenizer, tokenizer.chat_template)
        return ends[-1] if ends else None
    return None


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    fields = tokenizer_fields(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id,
                          writer.add_eos_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):  # fmt: skip
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if (eot := end_of_turn_id(tokenizer)) is not None:
        writer.add_eot_token_id(int(eot))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model: Any, tokenizer: Any, path: Path, quant: str, name: str) -> dict[str, int]:
    """Write the file; returns how many tensors went in each ggml type (for the log line)."""
    import gguf

    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    config = model.config
    arch = _arch(config)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_architecture(writer, config)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    counts: dict[str, int] = {}
    for target, data in gguf_tensors(model, arch):
        encoded, qtype = _encode(data, quant)
        writer.add_tensor(target, encoded, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
