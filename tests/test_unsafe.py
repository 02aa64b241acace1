"""Unsafe inputs: pickle weights and model-shipped Python code are refused unless the recipe opts in, and a hostile
pickle never runs; every from_pretrained call in llmtune states its trust and weight-format choices explicitly.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmtune.errors import UserError
from llmtune.infer.load import load_for_inference
from llmtune.modeling import load_model, load_tokenizer
from llmtune.recipe import load_recipe

PACKAGE = Path(__file__).resolve().parent.parent / "llmtune"
CUSTOM_CODE = """
import os
from pathlib import Path

from transformers import LlamaForCausalLM

Path(os.environ["LLMTUNE_TEST_RAN"]).write_text("the model's own code ran")


class CustomLlama(LlamaForCausalLM):
    pass
"""


class Payload:
    """Unpickling this runs code: it writes the file named by LLMTUNE_TEST_RAN."""

    def __reduce__(self):
        path = os.environ["LLMTUNE_TEST_RAN"]
        return exec, (f"open({path!r}, 'w').write('pickle ran')",)


def write_recipe(tmp_path: Path, model: Path, data: Path, **model_keys) -> Path:
    recipe = {
        "stage": "sft",
        "model": {"name_or_path": str(model), **model_keys},
        "method": {"kind": "lora"},
        "data": {"train": [{"path": str(data / "sft_messages.jsonl")}], "max_length": 128,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 1, "batch_size": 2},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def copy_model(src: Path, dst: Path, weights: dict | None = None) -> Path:
    """The tiny model with its safetensors weights replaced by a pytorch_model.bin pickle of `weights`."""
    shutil.copytree(src, dst)
    if weights is not None:
        (dst / "model.safetensors").unlink()
        torch.save(weights, dst / "pytorch_model.bin")
    return dst


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ran.txt"
    monkeypatch.setenv("LLMTUNE_TEST_RAN", str(path))
    return path


def test_a_pickle_only_model_is_refused_unless_the_recipe_allows_it(tmp_path, tiny_model_dir, tiny_data_dir) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "pickled", load_file(tiny_model_dir / "model.safetensors"))
    recipe = write_recipe(tmp_path, model, tiny_data_dir)
    proc = subprocess.run([sys.executable, "-m", "llmtune", "sft", "--recipe", str(recipe)], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = " ".join(proc.stderr.split())
    assert "only pickle weights (.bin)" in message and "model.allow_pickle: true" in message
    assert not (tmp_path / "out").exists()

    allowed = load_model(load_recipe(write_recipe(tmp_path, model, tiny_data_dir, allow_pickle=True)))
    reference = load_model(load_recipe(write_recipe(tmp_path, tiny_model_dir, tiny_data_dir)))
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.equal(allowed(ids).logits, reference(ids).logits), "the pickle holds the same weights"

    with pytest.raises(UserError, match="pickle .bin weights are not loaded"):
        load_for_inference(str(model))


def test_a_hostile_pickle_never_runs(tmp_path, tiny_model_dir, tiny_data_dir, ran) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "hostile", {"payload": Payload()})
    with pytest.raises(UserError, match="model.allow_pickle"):
        load_model(load_recipe(write_recipe(tmp_path, model, tiny_data_dir)))
    with pytest.raises(UserError, match="cannot load the weights"):  # allowed, it is still read with weights_only
        load_model(load_recipe(write_recipe(tmp_path, model, tiny_data_dir, allow_pickle=True)))
    assert not ran.exists()


def test_a_pickle_only_adapter_is_refused(tmp_path, tiny_model_dir, tiny_data_dir, tiny_sft_adapter) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_sft_adapter, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter / "adapter_model.bin")
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, tiny_data_dir, adapter=str(adapter)))
    from llmtune.modeling import apply_method

    with pytest.raises(UserError, match="model.allow_pickle: true"):
        apply_method(load_model(recipe), recipe)
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        load_for_inference(str(tiny_model_dir), str(adapter))


def custom_code_model(src: Path, dst: Path) -> Path:
    """The tiny model declaring its own class in config.json (auto_map), with the code that defines it."""
    model = copy_model(src, dst)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (model / "config.json").write_text(json.dumps(config, indent=2))
    (model / "modeling_custom.py").write_text(CUSTOM_CODE)
    return model


def test_model_code_is_refused_by_default_and_runs_only_when_trusted(tmp_path, tiny_model_dir, tiny_data_dir,
                                                                     ran) -> None:  # fmt: skip
    model = custom_code_model(tiny_model_dir, tmp_path / "custom")
    recipe = load_recipe(write_recipe(tmp_path, model, tiny_data_dir))
    assert recipe.model.trust_remote_code is False
    for load in (load_tokenizer, load_model):
        with pytest.raises(UserError, match=r"auto_map: modeling_custom.CustomLlama.*model.trust_remote_code: true"):
            load(recipe)
    with pytest.raises(UserError, match="ships its own Python code"):
        load_for_inference(str(model))
    assert not ran.exists()

    trusted = write_recipe(tmp_path, model, tiny_data_dir, trust_remote_code=True)
    code = (f"from llmtune.modeling import load_model; from llmtune.recipe import load_recipe; "
            f"print(type(load_model(load_recipe({str(trusted)!r}))).__name__)")  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "hf" / "modules")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "CustomLlama" and ran.read_text() == "the model's own code ran"


def from_pretrained_calls() -> list[tuple[str, str, str]]:
    """(module, receiver, enclosing function source) for every `X.from_pretrained(...)` call in llmtune."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
                if isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained":
                    receiver = ast.unparse(call.func.value)
                    found.append((path.name, receiver, ast.get_source_segment(source, func) or ""))
    return found


def test_every_from_pretrained_call_states_trust_and_weight_format() -> None:
    """Loaders of code (Auto* classes) pass trust_remote_code; loaders of model weights also pass use_safetensors.
    Config-only loaders (GenerationConfig, PeftConfig) and adapter loading (PeftModel, checked above) are exempt."""
    calls = from_pretrained_calls()
    assert len(calls) >= 5
    exempt = {"GenerationConfig", "PeftConfig", "PeftModel"}
    for module, receiver, function in calls:
        if receiver in exempt:
            continue
        assert "trust_remote_code" in function, f"{module}: {receiver}.from_pretrained without trust_remote_code"
        if receiver not in ("AutoTokenizer", "AutoConfig"):
            assert "use_safetensors" in function, f"{module}: {receiver}.from_pretrained without use_safetensors"
