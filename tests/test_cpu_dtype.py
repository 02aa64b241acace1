"""model.dtype auto on a machine without CUDA: bf16 only for lora/qlora of a bf16 checkpoint on a bf16-capable CPU."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("kind", "stored", "native", "expected"),
    [
        ("lora", "bfloat16", True, "bfloat16"),
        ("qlora", "bfloat16", True, "bfloat16"),
        ("lora", "float32", True, "float32"),
        ("lora", None, True, "float32"),
        ("lora", "bfloat16", False, "float32"),
        ("full", "bfloat16", True, "float32"),
        ("freeze", "bfloat16", True, "float32"),
    ],
)
def test_auto_dtype_on_cpu(monkeypatch, kind, stored, native, expected) -> None:
    from llmtune.modeling import load as modeling
    from llmtune.schema import MethodSpec

    monkeypatch.setattr(modeling, "has_cuda", lambda: False)
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: native)
    assert modeling.resolve_dtype("auto", MethodSpec(kind=kind), stored) == getattr(torch, expected)
    assert modeling.resolve_dtype("float32", MethodSpec(kind=kind), stored) == torch.float32


def test_stored_dtype_reads_config(tmp_path) -> None:
    from llmtune.modeling import stored_dtype

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert stored_dtype(tmp_path) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "float16"}}))
    assert stored_dtype(tmp_path) == "float16"
    assert stored_dtype(tmp_path / "missing") is None
