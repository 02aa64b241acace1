"""`llmtune export --format gguf`: the file is read back by an independent reader (transformers' GGUF loading, and
gguf's own GGUFReader for the metadata) and computes the merged model's logits within the type's tolerance; the
tokenizer, chat template and stop tokens travel in the metadata; the same input gives the same bytes.

Measured on the tiny base model (logits of magnitude about 0.6): max |logit diff| f32 0.0, f16 2.7e-4, q8_0 6.8e-3
(the down projection, 172 wide, is not a multiple of 32 and stays f16); the bounds below leave room for the merged
adapter and for other CPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import run_main as cli

PROMPT = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]


@pytest.fixture(scope="module")
def merged(tiny_sft_adapter):
    """The reference: the sft adapter merged into its base by peft, in float32."""
    from llmtune.infer.load import load_for_inference

    loaded = load_for_inference(None, str(tiny_sft_adapter), dtype="float32", device="cpu")
    return loaded.model.merge_and_unload().eval(), loaded.tokenizer


def export_gguf(capsys, adapter: Path, out: Path, quant: str) -> Path:
    code, _, err = cli(capsys, "export", "--adapter", str(adapter), "--out", str(out), "--format", "gguf",
                       "--quant", quant)  # fmt: skip
    assert code == 0, err
    return out / f"model-{quant}.gguf"


def reload(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def max_logit_diff(reference, model, ids) -> float:
    with torch.no_grad():
        return (reference(ids).logits - model(ids).logits).abs().max().item()


def greedy(model, ids, stops) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=3)
    return out[0, ids.shape[1] :].tolist()


def test_gguf_f16_and_q8_0_reload_with_transformers_and_match_the_merged_model(
    merged, tiny_sft_adapter, tmp_path, capsys
) -> None:
    import gguf

    reference, tokenizer = merged
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids

    f16 = export_gguf(capsys, tiny_sft_adapter, tmp_path / "f16", "f16")
    again = export_gguf(capsys, tiny_sft_adapter, tmp_path / "f16-again", "f16")
    assert f16.read_bytes() == again.read_bytes(), "the same model gives the same file"
    model, gguf_tokenizer = reload(f16)
    assert max_logit_diff(reference, model, ids) < 2e-3
    assert greedy(model, ids, [2, 0]) == greedy(reference, ids, [2, 0])
    assert gguf_tokenizer(text, add_special_tokens=False).input_ids == ids[0].tolist()
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    assert (gguf_tokenizer.eos_token, gguf_tokenizer.pad_token) == ("<|im_end|>", "<|pad|>")

    fields = gguf.GGUFReader(f16).fields
    value = {name: fields[name].contents() for name in fields if not name.startswith("tokenizer.ggml.token")}
    assert value["general.architecture"] == "llama" and value["tokenizer.ggml.model"] == "gpt2"
    assert value["tokenizer.ggml.eos_token_id"] == 2 and value["tokenizer.ggml.eot_token_id"] == 2
    assert value["tokenizer.chat_template"] == tokenizer.chat_template
    assert len(fields["tokenizer.ggml.merges"].contents()) > 0

    q8 = export_gguf(capsys, tiny_sft_adapter, tmp_path / "q8", "q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q8).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == "F16", "172-wide rows do not split into blocks of 32"
    q8_model, _ = reload(q8)
    diff = max_logit_diff(reference, q8_model, ids)
    assert 1e-4 < diff < 3e-2, diff
    assert q8.stat().st_size < 0.7 * f16.stat().st_size


def test_gguf_refuses_an_unknown_quant_type_before_loading(tiny_model_dir, tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--format",
                       "gguf", "--quant", "q3_k")  # fmt: skip
    assert code == 2 and "--quant 'q3_k'" in err and "q8_0" in err
    code, _, err = cli(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--format",
                       "onnx")  # fmt: skip
    assert code == 2 and "--format 'onnx'" in err
