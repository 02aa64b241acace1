"""llmtune plan: exact counts from config.json alone, the activation formula, and the estimate vs measured peaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmtune.errors import UserError
from llmtune.hub import looks_like_path
from llmtune.jobs.init_model import llama_param_count
from llmtune.plan.inspect import inspect_model, load_model_config
from llmtune.plan.memory import (
    FUSED_TOKENS_PER_TILE,
    FUSED_VOCAB_PER_TILE,
    GIB,
    NF4_BITS,
    estimate,
    layer_activation_bytes,
    resolve_setup,
)
from llmtune.plan.report import make_plan
from llmtune.plan.source import parse_memory, shipped_config
from llmtune.recipe import load_recipe

RECIPES = Path(__file__).parents[1] / "llmtune" / "recipes"

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
}  # fmt: skip
MEASURE_TOLERANCE = 0.15


def write_recipe(path: Path, model_path: Path, **sections) -> Path:
    from llmtune.recipe import deep_merge

    base = {
        "stage": "sft",
        "model": {"name_or_path": str(model_path)},
        "method": {"kind": "lora"},
        "data": {"train": [{"path": "unused.jsonl"}], "max_length": 256},
        "output": {"dir": str(path.parent / "out")},
    }
    path.write_text(yaml.safe_dump(deep_merge(base, sections)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config_only_8b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-3.1-8B directory with nothing but config.json: what plan must work from."""
    path = tmp_path_factory.mktemp("llama31-8b-config")
    (path / "config.json").write_text(json.dumps(LLAMA_31_8B), encoding="utf-8")
    return path


def plan_for(tmp_path: Path, model_path: Path, sets: list[str] | None = None, **sections):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_path, **sections), sets)
    return recipe, inspect_model(load_model_config(recipe), recipe)


def test_counts_match_the_real_models(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from llmtune import modeling

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for method in ({"kind": "lora", "lora": {"r": 8}}, {"kind": "lora", "lora": {"target_modules": ["q_proj"]}}):
        recipe, facts = plan_for(tmp_path, tiny_model_dir, method=method)
        assert facts.total_params == sum(p.numel() for p in real.parameters()) == facts.closed_form
        fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(fresh, modeling.lora_config(recipe.method, "CAUSAL_LM"))
        assert facts.trainable("lora") == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    recipe, facts = plan_for(tmp_path, tiny_model_dir, method={"kind": "freeze", "freeze": {"trainable_layers": 1}})
    frozen = modeling.apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), recipe)
    assert facts.trainable("freeze") == sum(p.numel() for p in frozen.parameters() if p.requires_grad)
    assert 0 < facts.trainable("freeze") < facts.total_params


def test_plan_needs_only_config_json(tmp_path: Path, config_only_8b: Path) -> None:
    recipe, facts = plan_for(tmp_path, config_only_8b, method={"kind": "qlora"})
    assert facts.total_params == facts.closed_form == 8_030_261_248
    assert facts.rule_of_thumb == 128256 * 4096 + 12 * 4096**2 * 32
    assert facts.trainable("lora") == 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers: peft's count
    assert facts.quantizable_params == facts.total_params - 2 * 128256 * 4096 - 65 * 4096
    weights = estimate(facts, resolve_setup(recipe)).weights
    expected = facts.quantizable_params * NF4_BITS[True] / 8 + (facts.total_params - facts.quantizable_params) * 4
    assert weights == pytest.approx(expected + facts.adapter_params * 4)
    assert NF4_BITS[True] == pytest.approx(4.127, abs=1e-3)


def test_cli_verdict_and_suggestions_re_estimate(tmp_path: Path, config_only_8b: Path) -> None:
    path = write_recipe(tmp_path / "full.yaml", config_only_8b, method={"kind": "full"}, train={"batch_size": 4})
    result = subprocess.run(
        [sys.executable, "-m", "llmtune", "plan", "--recipe", str(path), "--gpu-memory", "24GiB"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "8,030,261,248 exact" in result.stdout and "does not fit in 24.00 GiB" in result.stdout
    plan = make_plan(load_recipe(path), budget=parse_memory("24GiB"))
    assert not plan.fits and plan.steps and plan.steps[-1].estimate.peak <= 24 * GIB
    assert any(step.change.startswith("LoRA") for step in plan.steps)  # 16 B/param of full bf16 AdamW cannot fit
    assert all(f"--set {o}" in result.stdout for step in plan.steps for o in step.overrides)
    again = make_plan(load_recipe(path, [o for step in plan.steps for o in step.overrides]))
    assert again.estimate.peak == pytest.approx(plan.steps[-1].estimate.peak)


def test_more_processes_shard_with_zero3(tmp_path: Path, config_only_8b: Path) -> None:
    from dataclasses import replace

    from llmtune.training.accelerate import Sharding

    recipe, facts = plan_for(tmp_path, config_only_8b, method={"kind": "full"})
    single = resolve_setup(recipe)
    one, four = (estimate(facts, replace(single, sharding=Sharding("zero3", n))) for n in (1, 4))
    assert four.optimizer == pytest.approx(one.optimizer / 4) and four.weights < one.weights / 3
    offload = estimate(facts, replace(single, sharding=Sharding("zero3", 1, True, True)))
    assert offload.optimizer == 0 and offload.host > one.optimizer


@pytest.mark.parametrize(
    ("method", "dtype"),
    [("full", "float32"), ("full", "bfloat16"), ("lora", "float32"), ("lora0", "float32"), ("lora", "bfloat16")],
)
def test_layer_activation_formula_matches_saved_tensors(tmp_path: Path, method: str, dtype: str) -> None:
    """Bytes autograd saves for one decoder layer (hooks on every saved tensor) vs the formula, within 3%."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmtune import modeling

    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    config.save_pretrained(tmp_path / "m")
    kind = {"kind": "lora", "lora": {"dropout": 0.0 if method == "lora0" else 0.05}} if "lora" in method else {}
    kind = kind or {"kind": method}
    recipe, facts = plan_for(tmp_path, tmp_path / "m", method=kind, model={"dtype": dtype}, data={"max_length": 64})
    torch.manual_seed(0)
    model = modeling.apply_method(AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)), recipe).train()
    ids = torch.randint(0, 512, (2, 64))
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.1"))
    saved: dict[int, int] = {}
    inside = []
    layer.register_forward_pre_hook(lambda *_: inside.append(1))
    layer.register_forward_hook(lambda *_: inside.pop() and None)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if inside and key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask)
    setup = resolve_setup(recipe, "cpu")
    predicted = ids.numel() * layer_activation_bytes(facts, setup, base_trainable=recipe.method.kind == "full")
    assert sum(saved.values()) == pytest.approx(predicted, rel=0.03)


@pytest.fixture(scope="module")
def measured_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A LLaMA with hidden 256, 4 layers, vocab 8192 (tensor memory of a few hundred MB) and enough text data."""
    from transformers import AutoTokenizer

    from llmtune.data.synth import write_builtin_data
    from llmtune.jobs.init_model import Preset, build_model, llama_config, write_model_dir

    root = tmp_path_factory.mktemp("plan-measure")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    preset = Preset(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=688,
                    vocab_size=8192, max_positions=1024)  # fmt: skip
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    write_model_dir(root / "model", build_model(llama_config(preset, 8192, *ids), seed=0), tokenizer, overwrite=False)
    write_builtin_data(root / "data", n_train=120, n_eval=4, seed=0)
    return root / "model", root / "data" / "text.jsonl"


@pytest.mark.slow
def test_estimate_tracks_measured_peak_on_cpu(tmp_path: Path, measured_model: tuple[Path, Path]) -> None:
    """Two real `train.run`s on CPU (full; LoRA with checkpointing) vs plan --device cpu, within 15%."""
    model, text = measured_model
    recipes = []
    for method, checkpointing in (("full", False), ("lora", True)):
        recipes.append(
            write_recipe(
                tmp_path / f"{method}.yaml", model, stage="pt", method={"kind": method}, model={"dtype": "float32"},
                data={"train": [{"path": str(text), "format": "text"}], "cache_dir": str(tmp_path / "cache")},
                train={"max_steps": 2, "batch_size": 4, "save_steps": 1000, "optimizer": "adamw_torch",
                       "gradient_checkpointing": checkpointing},
                output={"dir": str(tmp_path / f"{method}-out")},
            )
        )  # fmt: skip
    out = tmp_path / "measured.json"
    probe = Path(__file__).with_name("memprobe.py")
    done = subprocess.run([sys.executable, str(probe), str(out), *map(str, recipes)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(out.read_text())
    for path in recipes:
        recipe = load_recipe(path)
        predicted = estimate(inspect_model(load_model_config(recipe), recipe), resolve_setup(recipe, "cpu")).peak
        assert predicted == pytest.approx(measured[str(path)]["peak"], rel=MEASURE_TOLERANCE), path.name


def test_fused_head_constants_match_trl() -> None:
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    assert (FUSED_TOKENS_PER_TILE, FUSED_VOCAB_PER_TILE) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)


def test_cpu_fused_head_rows_match_llmtune() -> None:
    from llmtune.modeling.fused_head import CHUNK_ROWS
    from llmtune.plan.memory import CPU_FUSED_HEAD_ROWS

    assert CPU_FUSED_HEAD_ROWS == CHUNK_ROWS


@pytest.mark.parametrize(("stored", "native", "method", "weight_bytes"), [
    ("bfloat16", True, "lora", 2), ("bfloat16", False, "lora", 4), ("float32", True, "lora", 4),
    ("bfloat16", True, "full", 4),
])  # fmt: skip
def test_cpu_auto_dtype_follows_the_loader(tmp_path: Path, monkeypatch, stored, native, method, weight_bytes) -> None:
    """plan --device cpu with model.dtype auto picks the weights dtype load_model would (modeling.auto_cpu_bf16)."""
    from llmtune.modeling import load

    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: native)
    (tmp_path / "m").mkdir()
    config = {**LLAMA_31_8B, "num_hidden_layers": 1, "torch_dtype": stored}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path / "m", method={"kind": method}))
    assert make_plan(recipe, device="cpu").setup.weight_bytes == weight_bytes
    assert make_plan(recipe, device="gpu").setup.weight_bytes == 2


def test_parse_memory_and_errors(tmp_path: Path, config_only_8b: Path) -> None:
    assert parse_memory("24GiB") == 24 * GIB and parse_memory("80GB") == 80 * 10**9
    assert parse_memory("16000MiB") == 16000 * 2**20 and parse_memory("24") == 24 * GIB
    with pytest.raises(UserError, match="--gpu-memory"):
        parse_memory("lots")
    recipe = load_recipe(write_recipe(tmp_path / "q.yaml", config_only_8b, method={"kind": "qlora"}))
    with pytest.raises(UserError, match="qlora needs a GPU"):
        resolve_setup(recipe, "cpu")
    missing = write_recipe(tmp_path / "m.yaml", tmp_path / "nowhere")
    result = subprocess.run([sys.executable, "-m", "llmtune", "plan", "--recipe", str(missing)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr


SHIPPED_RECIPES = sorted(
    p.relative_to(RECIPES).with_suffix("").as_posix()
    for p in RECIPES.rglob("*.yaml")
    if p.relative_to(RECIPES).parts[0] != "accelerate"
)


def qwen2_param_count(c: dict) -> int:
    """Closed form for a Qwen2 decoder: embeddings (tied head), per layer q/k/v with bias, o, SwiGLU, 2 norms."""
    h, kv = c["hidden_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * c["intermediate_size"] + 2 * h
    return c["vocab_size"] * h * (1 if c["tie_word_embeddings"] else 2) + c["num_hidden_layers"] * layer + h


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Nothing cached (an empty HF_HOME) and no network: what a fresh install on a plane sees."""
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_every_shipped_recipe_model_has_a_shipped_config() -> None:
    for name in SHIPPED_RECIPES:
        model = load_recipe(name).model.name_or_path
        assert looks_like_path(model) or model.startswith("runs/") or shipped_config(model), (name, model)
    assert shipped_config("Qwen/Qwen2.5-0.5B-Instruct") and shipped_config("meta-llama/Llama-3.1-8B-Instruct")


PLAN_EVERY_RECIPE = """
import json, sys
from llmtune.plan.report import make_plan
from llmtune.recipe import load_recipe

out = {}
for name in sys.argv[1:]:
    recipe = load_recipe(name)
    plan = make_plan(recipe, "gpu" if recipe.method.kind == "qlora" else "cpu")
    out[name] = [plan.facts.total_params, plan.config_origin]
print(json.dumps(out))
"""


def expected_count(name: str, tiny_model_dir: Path) -> tuple[int, str]:
    """(the closed-form parameter count of the recipe's model, where its config.json should come from)."""
    recipe = load_recipe(name)
    shipped = shipped_config(recipe.model.name_or_path)
    if shipped is None:  # a demo recipe: runs/demo/... is the tiny model here
        weights = load_file(tiny_model_dir / "model.safetensors")
        count = sum(t.numel() for t in weights.values())
        if recipe.stage == "rm":  # a score head (hidden x 1) in place of the LM head
            count += weights["lm_head.weight"].shape[1] - weights["lm_head.weight"].numel()
        return count, "(local directory)"
    config = json.loads(shipped.read_text())
    if config["model_type"] == "qwen2":
        count = qwen2_param_count(config)
        assert count == 494_032_768
    else:
        count = llama_param_count(SimpleNamespace(**config))
        assert count == 8_030_261_248
    return count, f"{shipped} (copy shipped with llmtune)"


def test_shipped_recipes_plan_offline(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`plan` on every shipped recipe with nothing cached and HF_HUB_OFFLINE=1: the Hub ones read the shipped
    config.json, the demo ones (runs/demo/...) a local directory, here the tiny model put where the demo writes it.
    One process plans them all (a process per recipe would spend minutes importing torch); the CLI runs once."""
    for run in ("base", "pt", "sft"):
        (tmp_path / "runs" / "demo" / run).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / "demo" / run).symlink_to(tiny_model_dir)
    env = offline_env(tmp_path)
    result = subprocess.run([sys.executable, "-c", PLAN_EVERY_RECIPE, *SHIPPED_RECIPES], capture_output=True,
                            text=True, timeout=600, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Retry" not in result.stderr and "retry" not in result.stderr
    planned = json.loads(result.stdout.splitlines()[-1])
    assert sorted(planned) == SHIPPED_RECIPES and len(SHIPPED_RECIPES) >= 11
    for name, (total, origin) in planned.items():
        count, source = expected_count(name, tiny_model_dir)
        assert total == count and origin.endswith(source), (name, total, origin)
    started = time.monotonic()
    cli = subprocess.run([sys.executable, "-m", "llmtune", "plan", "--recipe", "llama3.1-8b/sft-qlora"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)  # fmt: skip
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    assert "8,030,261,248 exact" in cli.stdout and "(copy shipped with llmtune)" in cli.stdout
    assert "qlora: trainable 41,943,040 / 8,072,204,288 (0.5%)" in cli.stdout
    assert time.monotonic() - started < 120


def test_config_option_overrides_where_config_json_comes_from(tmp_path: Path, config_only_8b: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tmp_path / "nowhere")  # the recipe's own model does not exist
    config = config_only_8b / "config.json"
    result = subprocess.run(
        [sys.executable, "-m", "llmtune", "plan", "--recipe", str(path), "--config", str(config)],
        capture_output=True, text=True, timeout=300, env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "8,030,261,248 exact" in result.stdout and "(--config)" in result.stdout
    # --config wins over the shipped copy too (the Qwen recipe planned with Llama's shapes)
    plan = make_plan(load_recipe("qwen2.5-0.5b/sft-lora"), config_file=config)
    assert plan.facts.total_params == 8_030_261_248 and "(--config)" in plan.config_origin
    with pytest.raises(UserError, match="--config"):
        make_plan(load_recipe("qwen2.5-0.5b/sft-lora"), config_file=tmp_path / "missing.json")


def test_trainable_share_matches_what_sft_reports(tiny_recipe, tmp_path: Path) -> None:
    """One definition: trainable / all parameters of the model as trained (base + adapters + saved copies)."""
    from llmtune.modeling import describe_parameters
    from llmtune.training.run import run

    method = {"kind": "lora", "lora": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]}}
    path = tiny_recipe(method=method, train={"max_steps": 1})
    run(load_recipe(path))
    summary = json.loads((tmp_path / "recipe-out" / "summary.json").read_text())
    plan = make_plan(load_recipe(path), device="cpu")
    assert plan.facts.trainable("lora") == summary["trainable_params"]
    assert plan.facts.trained_total("lora") == summary["total_params"]
    result = subprocess.run([sys.executable, "-m", "llmtune", "plan", "--recipe", str(path), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert describe_parameters(summary["trainable_params"], summary["total_params"]) in result.stdout


def test_unreachable_hub_fails_fast_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "sft", "model": {"name_or_path": "nobody/not-shipped"}, "method": {"kind": "lora"},
        "data": {"train": [{"path": "unused.jsonl"}]}, "output": {"dir": str(tmp_path / "out")},
    }))  # fmt: skip
    env = offline_env(tmp_path)
    for offline in ("1", ""):  # offline, then "online" against an endpoint that refuses every connection
        env = {**env, "HF_HUB_OFFLINE": offline, "HF_ENDPOINT": "http://127.0.0.1:9"}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "llmtune", "plan", "--recipe", str(path)],
                                capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert time.monotonic() - started < 10
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        for hint in ("model.name_or_path: /path/to/dir", "--config FILE", "llmtune download nobody/not-shipped"):
            assert hint in result.stderr, (hint, result.stderr)
        assert result.stderr.count("retry 1/1") == (0 if offline else 1)


def test_huggingface_hub_warnings_print_once() -> None:
    code = (
        "from llmtune import console; console.set_verbosity(console.NORMAL)\n"
        "from huggingface_hub.utils import logging\n"
        "logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stderr.count("Retrying in 1s") == 1, result.stderr
