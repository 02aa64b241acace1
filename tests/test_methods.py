"""The four methods (full, freeze, lora, qlora) train the tiny model through the real SFTTrainer.

Each run fits 8 fixed examples and evaluates on them before and after training, so "the loss falls" is measured
on the same batch, free of sampling noise. Outputs are reloaded and must give the in-memory model's logits.

A run is deterministic (tests/test_determinism.py), so each test always sees the same numbers; the margins below
hold with room over train.seed 0-19 (which also changes the 8 examples, the init and the order), measured as the
eval-loss fall after 8 steps: min / mean / max (seed 0).
  lora r8, lr 5e-3      0.43 / 0.51 / 0.64 (0.46)   margin 0.3   (at lr 1e-2 the fall ranged -0.07..0.82)
  rslora + dora r4      0.44 / 0.57 / 0.73 (0.45)   margin 0.3
  full, lr 3e-3         2.05 / 2.20 / 2.33 (2.11)   margin 1.5
  freeze, last layer    3.40 / 3.66 / 3.89 (3.42)   margin 2.5
  qlora, 16 steps       0.39 / 0.61 / 0.75 (0.58)   margin 0.3   (at 8 steps it ranged 0.07..0.66)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmtune import modeling
from llmtune.errors import UserError
from llmtune.recipe import load_recipe
from llmtune.training.run import RunResult, run

PROBE = torch.tensor([[5, 17, 99, 250, 3, 41, 77, 300, 12, 8, 64, 128]])


def fit(tiny_recipe, tiny_data_dir: Path, kind: str, method: dict | None = None, **sections) -> RunResult:
    """Train on 8 fixed chat examples, evaluating on the same 8 at the start and the end."""
    source = {"path": str(tiny_data_dir / "sft_messages.jsonl"), "max_samples": 8}
    sections.setdefault("train", {}).setdefault("extra", {"eval_on_start": True})
    sections.setdefault("data", {})["eval"] = [source]
    return run(load_recipe(tiny_recipe(method={"kind": kind, **(method or {})}, source=[source], **sections)))


def eval_losses(result: RunResult) -> list[float]:
    rows = [json.loads(line) for line in (Path(result.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [row["eval_loss"] for row in rows if "eval_loss" in row]


def assert_loss_fell(result: RunResult, by: float) -> None:
    losses = eval_losses(result)
    assert len(losses) >= 2, losses
    assert losses[-1] < losses[0] - by, losses


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE.to(model.device)).logits.float()


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_lora_starts_at_the_base_model_with_alpha_over_r_scaling(tiny_recipe) -> None:
    recipe = load_recipe(tiny_recipe(method={"kind": "lora", "lora": {"r": 4, "alpha": 16}}))
    base = modeling.load_model(recipe)
    before = logits(base)
    peft_model = modeling.apply_method(base, recipe)
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(q_proj.lora_B["default"].weight) == 0
    assert torch.equal(logits(peft_model), before)
    assert q_proj.scaling["default"] == 16 / 4
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in peft_model.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    rs = load_recipe(tiny_recipe(method={"kind": "lora", "lora": {"r": 4, "alpha": 16, "use_rslora": True}}))
    rs_model = modeling.apply_method(modeling.load_model(rs), rs)
    assert rs_model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 16 / 4**0.5


def test_lora_trains_only_adapters_and_the_saved_adapter_reloads(tiny_recipe, tiny_data_dir, tiny_model_dir) -> None:
    from peft import PeftModel

    result = fit(tiny_recipe, tiny_data_dir, "lora", method={"lora": {"r": 8, "alpha": 16}}, train={"lr": 5.0e-3})
    assert_loss_fell(result, by=0.3)
    model = result.trainer.model
    base = base_weights(tiny_model_dir)
    lora_b_norm = 0.0
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad, name
            lora_b_norm += float(param.detach().norm()) if "lora_B" in name else 0.0
        else:
            assert not param.requires_grad, name
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param.detach().cpu(), base[key]), name
    assert lora_b_norm > 0
    out = Path(result.output_dir)
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()

    recipe = load_recipe(out / "recipe.yaml")
    reloaded = PeftModel.from_pretrained(modeling.load_model(recipe), str(out))
    assert torch.allclose(logits(reloaded), logits(model), atol=1e-6)


def test_rslora_and_dora_train_and_are_saved(tiny_recipe, tiny_data_dir) -> None:
    result = fit(tiny_recipe, tiny_data_dir, "lora", method={"lora": {"r": 4, "alpha": 8, "use_rslora": True,
                                                                      "use_dora": True}})  # fmt: skip
    assert_loss_fell(result, by=0.3)
    out = Path(result.output_dir)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["use_dora"] is True
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert any("lora_magnitude_vector" in key for key in load_file(out / "adapter_model.safetensors"))


def test_full_trains_every_weight_and_the_saved_model_reloads(tiny_recipe, tiny_data_dir, tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    result = fit(tiny_recipe, tiny_data_dir, "full", train={"lr": 3.0e-3})
    assert_loss_fell(result, by=1.5)
    assert result.trainable_params == result.total_params
    base = base_weights(tiny_model_dir)
    model = result.trainer.model
    for name, param in model.named_parameters():
        assert param.requires_grad and not torch.equal(param.detach().cpu(), base[name]), name
    out = Path(result.output_dir)
    assert (out / "generation_config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(logits(reloaded), logits(model))


def test_freeze_trains_the_last_layers_only(tiny_recipe, tiny_data_dir, tiny_model_dir) -> None:
    method = {"freeze": {"trainable_layers": 1, "trainable_modules": ["lm_head"]}}
    result = fit(tiny_recipe, tiny_data_dir, "freeze", method=method)
    assert_loss_fell(result, by=2.5)
    base = base_weights(tiny_model_dir)
    trained = {name: p.detach().cpu() for name, p in result.trainer.model.named_parameters()}
    for name, value in trained.items():
        if name.startswith("model.layers.1.") or name == "lm_head.weight":
            assert not torch.equal(value, base[name]), f"{name} should have been trained"
        else:
            assert torch.equal(value, base[name]), f"{name} should be frozen"
    saved = load_file(Path(result.output_dir) / "model.safetensors")
    assert all(torch.equal(saved[name], value) for name, value in trained.items())


def test_qlora_trains_on_a_4bit_nf4_base(tiny_recipe, tiny_data_dir, capsys) -> None:
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel

    result = fit(tiny_recipe, tiny_data_dir, "qlora", train={"max_steps": 16})
    assert_loss_fell(result, by=0.3)
    model = result.trainer.model
    linears = [m.base_layer for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert linears and all(isinstance(layer, Linear4bit) for layer in linears)
    for layer in linears:
        assert layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.quant_state.nested, "double quantization is on by default"
    if not torch.cuda.is_available():
        assert "paged_adamw_8bit needs a CUDA GPU; falling back to adamw_8bit" in capsys.readouterr().err
        assert type(result.trainer.optimizer.optimizer).__module__.startswith("bitsandbytes")
    recipe = load_recipe(Path(result.output_dir) / "recipe.yaml")
    reloaded = PeftModel.from_pretrained(modeling.load_model(recipe), result.output_dir)
    for name, param in reloaded.named_parameters():  # SFTTrainer keeps QLoRA adapters in bf16; peft loads them in fp32
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    assert torch.equal(logits(reloaded), logits(model))


def test_qlora_gradients_are_the_same_after_an_evaluation(tiny_recipe) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference at the first no-grad forward unless told not to."""
    recipe = load_recipe(tiny_recipe(method={"kind": "qlora", "lora": {"dropout": 0.0}}))
    model = modeling.apply_method(modeling.load_model(recipe), recipe)
    first_lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)

    def grad() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(input_ids=PROBE, labels=PROBE).loss.backward()
        return first_lora_a.grad.clone()

    before = grad()
    assert torch.count_nonzero(before) > 0
    logits(model)
    assert torch.equal(grad(), before)


def test_method_errors_name_the_key(tiny_recipe, tmp_path) -> None:
    too_many = tiny_recipe(method={"kind": "freeze", "freeze": {"trainable_layers": 5}})
    with pytest.raises(UserError, match="trainable_layers is 5 but the model has only 2 layers"):
        run(load_recipe(too_many))
    typo = tiny_recipe(method={"kind": "freeze", "freeze": {"trainable_modules": ["lm_haed"]}})
    with pytest.raises(UserError, match="'lm_haed' matches no parameter name"):
        run(load_recipe(typo))
    adapter_on_full = tiny_recipe(method="full", model={"adapter": str(tmp_path)})
    with pytest.raises(UserError, match="model.adapter is set but method.kind is 'full'"):
        run(load_recipe(adapter_on_full))
    not_a_model = tiny_recipe(model={"name_or_path": str(tmp_path)})
    with pytest.raises(UserError, match="is not a model directory"):
        run(load_recipe(not_a_model))
    missing = tiny_recipe(model={"name_or_path": "./no/such/model"})
    with pytest.raises(UserError, match="does not exist"):
        run(load_recipe(missing))
    nothing = tiny_recipe(method={"kind": "freeze", "freeze": {"trainable_layers": 0}})
    with pytest.raises(UserError, match="nothing is trainable"):
        run(load_recipe(nothing))
    unknown_arg = tiny_recipe(train={"extra": {"not_an_arg": 1}})
    with pytest.raises(UserError, match="train.extra: 'not_an_arg' is not an argument of SFTConfig"):
        run(load_recipe(unknown_arg))


def test_pickle_weights_are_refused_unless_allowed(tiny_recipe, tiny_model_dir, tmp_path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="has only pickle weights .* model.allow_pickle: true"):
        modeling.load_model(load_recipe(tiny_recipe(model={"name_or_path": str(pickled)})))


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_recipe, tiny_model_dir, tmp_path, capsys) -> None:
    copy = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = modeling.load_tokenizer(load_recipe(tiny_recipe(model={"name_or_path": str(copy)})))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert "no pad token; padding with its eos token" in capsys.readouterr().err


def test_quantization_config_follows_the_qlora_block() -> None:
    from llmtune.schema import MethodSpec

    assert modeling.quantization_config(MethodSpec(kind="lora")) is None
    spec = MethodSpec(kind="qlora", qlora={"quant_type": "fp4", "double_quant": False, "compute_dtype": "float16"})
    config = modeling.quantization_config(spec)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_use_double_quant is False and config.bnb_4bit_compute_dtype == torch.float16
