"""DPO through the real DPOTrainer on the tiny model: the held-out log-prob margin rises, the reference costs no
second copy of the weights, a run chained onto an SFT adapter starts from and stays anchored to the SFT model,
and QLoRA + DPO runs on CPU."""

from __future__ import annotations

import gc
import math
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmtune.errors import UserError
from llmtune.eval.measure import preference_metrics, sequence_logprobs
from llmtune.recipe import load_recipe
from llmtune.schema.align import DpoLoss
from llmtune.stages import dpo
from llmtune.stages.args import common_training_args
from llmtune.stages.preference import REF_ADAPTER
from llmtune.training.run import run

LORA = {"kind": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}


def dpo_recipe(tiny_recipe, data: Path, method: dict, max_samples: int | None = None, **sections) -> Path:
    source = {"path": str(data / "preference_chat.jsonl"), **({"max_samples": max_samples} if max_samples else {})}
    data_section = {"max_length": 64, **sections.pop("data", {})}
    return tiny_recipe(stage="dpo", method=method, source=[source], data=data_section, **sections)


def eval_rows(data: Path, n: int) -> list[dict]:
    from llmtune.data.formats import PREFERENCE
    from llmtune.data.load import load_rows
    from llmtune.schema import DataSource

    rows = load_rows([DataSource(path=str(data / "eval_preference.jsonl"))], kind=PREFERENCE)
    return [dict(row) for row in rows.select(range(n))]


def model_ids() -> set[int]:
    from transformers import PreTrainedModel

    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}


def new_models(before: set[int]) -> list[str]:
    """Class names of the whole transformers models created since `before` and still alive (not their parts)."""
    from transformers import PreTrainedModel

    gc.collect()
    found = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and id(o) not in before]
    parts = {id(sub) for model in found for sub in model.modules() if sub is not model}
    return [type(model).__name__ for model in found if id(model) not in parts]


def base_weight_numel(model: torch.nn.Module) -> int:
    """Elements in the distinct storages of the non-adapter weights: one model's worth when nothing is copied."""
    storages = {p.data_ptr(): p.numel() for name, p in model.named_parameters() if "lora_" not in name}
    return sum(storages.values())


def margin(metrics: dict) -> float:
    return metrics["logp_chosen"] - metrics["logp_rejected"]


def test_dpo_lora_raises_heldout_margin_with_one_copy_of_the_base(
    tiny_recipe, preference_data_dir, tiny_model_dir
) -> None:
    train = {"max_steps": 30, "batch_size": 8, "lr": 2e-3, "logging_steps": 10}
    recipe = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, LORA, train=train, dpo={"beta": 0.1}))
    existing = model_ids()
    result = run(recipe)
    trainer = result.trainer

    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]  # a fresh adapter: the reference is the adapter-off base
    assert new_models(existing) == ["LlamaForCausalLM"]
    on_disk = sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())
    assert base_weight_numel(trainer.model) == on_disk

    held_out = eval_rows(preference_data_dir, 96)
    model = trainer.model.eval()
    with model.disable_adapter():
        before = preference_metrics(model, trainer.processing_class, held_out)
    after = preference_metrics(model, trainer.processing_class, held_out)
    # held-out margin gain over train.seed 0-19: 0.22 / 0.39 / 0.55 (min / mean / max); accuracy rose on all 20
    assert margin(after) > margin(before) + 0.15, (before, after)
    assert after["logp_accuracy"] > before["logp_accuracy"], (before, after)
    logged = [row for row in trainer.state.log_history if "rewards/margins" in row]
    assert logged and {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(logged[-1])


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], labels)


def test_dpo_on_an_sft_adapter_starts_from_it_and_keeps_it_as_the_reference(
    tiny_recipe, preference_data_dir, tiny_model_dir, tiny_sft_adapter
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train = {"max_steps": 3, "batch_size": 4, "lr": 1e-2}
    recipe = load_recipe(
        dpo_recipe(tiny_recipe, preference_data_dir, LORA, 16, model={"adapter": str(tiny_sft_adapter)}, train=train)
    )
    trainer = dpo.build(recipe, common_training_args(recipe))
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", "ref"}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_sft_adapter).eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    policy = trainer.model.eval()

    assert torch.allclose(_logits(policy, batch), _logits(sft, batch), atol=1e-5)
    assert not torch.allclose(_logits(sft, batch), _logits(base, batch), atol=1e-3)  # the adapter matters
    sft_logps = _logps(sft, batch)

    def reference() -> torch.Tensor:
        return torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))

    assert torch.allclose(reference(), sft_logps, atol=1e-4)
    trainer.train()
    assert not torch.allclose(_logps(trainer.model.eval(), batch), sft_logps, atol=1e-2)  # the policy moved ...
    assert torch.allclose(reference(), sft_logps, atol=1e-4)  # ... the reference did not

    final = Path(recipe.output.dir) / "final"
    trainer.save_model(str(final))
    assert not (final / REF_ADAPTER).exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final).eval()
    assert torch.allclose(_logits(reloaded, batch), _logits(trainer.model, batch), atol=1e-5)


def test_chained_dpo_resumes_with_the_sft_reference_rebuilt(
    tiny_recipe, preference_data_dir, tiny_model_dir, tiny_sft_adapter
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train = {"max_steps": 2, "batch_size": 4, "save_steps": 2}
    path = dpo_recipe(tiny_recipe, preference_data_dir, LORA, 16, model={"adapter": str(tiny_sft_adapter)}, train=train)
    first = run(load_recipe(path))
    checkpoint = Path(first.output_dir) / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / REF_ADAPTER).exists()
    resumed = run(load_recipe(path, ["train.max_steps=4"]), resume=True)
    assert resumed.steps == 4
    trainer = resumed.trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_sft_adapter).eval()
    assert torch.allclose(torch.cat(trainer.compute_ref_log_probs(trainer.model, batch)), _logps(sft, batch), atol=1e-4)


def test_qlora_dpo_runs_on_cpu(tiny_recipe, preference_data_dir) -> None:
    method = {**LORA, "kind": "qlora", "qlora": {"compute_dtype": "float32"}}
    recipe = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, method, 16, train={"max_steps": 2}))
    result = run(recipe)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert result.trainer.ref_model is None
    assert any(type(p).__name__ == "Params4bit" for p in result.trainer.model.parameters())
    assert (Path(result.output_dir) / "adapter_model.safetensors").is_file()


def test_full_dpo_precomputes_the_reference_instead_of_copying_the_model(
    tiny_recipe, preference_data_dir, tiny_model_dir
) -> None:
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, {"kind": "full"}, 8))
    existing = model_ids()
    trainer = dpo.build(recipe, common_training_args(recipe))
    assert trainer.ref_model is None and new_models(existing) == ["LlamaForCausalLM"]
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    chosen, rejected = _logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), batch).chunk(2)
    assert torch.allclose(torch.tensor([r["ref_chosen_logps"] for r in rows]), chosen, atol=1e-4)
    assert torch.allclose(torch.tensor([r["ref_rejected_logps"] for r in rows]), rejected, atol=1e-4)


def test_explicit_reference_is_a_frozen_model_and_an_adapter_is_refused(
    tiny_recipe, preference_data_dir, tiny_model_dir, tiny_sft_adapter
) -> None:
    recipe = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, LORA, 8, dpo={"reference": str(tiny_model_dir)}))
    trainer = dpo.build(recipe, common_training_args(recipe))
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    bad = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, LORA, 8, dpo={"reference": str(tiny_sft_adapter)}))
    with pytest.raises(UserError, match="is an adapter, not a model"):
        dpo.build(bad, common_training_args(bad))


@pytest.mark.parametrize("loss", [*typing.get_args(DpoLoss), ["sigmoid", "sft"]], ids=str)
def test_every_dpo_loss_of_trl_runs_a_step(loss, tiny_recipe, preference_data_dir) -> None:
    """Each loss TRL 1.16's DPOTrainer implements, and a weighted sum (DPO + an SFT term, as in RPO), trains a step."""
    dpo_block = {"loss_type": loss, "label_smoothing": 0.001 if loss == "exo_pair" else 0.0}
    if isinstance(loss, list):
        dpo_block["loss_weights"] = [1.0, 0.5]
    train = {"max_steps": 1, "batch_size": 4}
    recipe = load_recipe(dpo_recipe(tiny_recipe, preference_data_dir, LORA, 8, train=train, dpo=dpo_block))
    result = run(recipe)
    assert result.steps == 1 and math.isfinite(result.final_loss)
    assert result.trainer.loss_types == recipe.dpo.losses
