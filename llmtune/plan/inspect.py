"""The model side of `llmtune plan`: read config.json (never weights) and count parameters on the `meta` device.

Where config.json comes from (a local directory, the HF cache, a shipped copy, the Hub) is `plan.source`'s job.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.errors import UserError
from llmtune.plan.memory import ModelFacts
from llmtune.plan.source import ConfigSource, find_config
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

LAYER_INDEX = re.compile(r"\.(\d+)\.")
CLOSED_FORM_TYPES = ("llama",)


def read_config(source: ConfigSource, recipe: Recipe) -> PretrainedConfig:
    """The configuration in one config.json file (read from its directory when it is named config.json, so that a
    remote-code model finds its code beside it)."""
    from transformers import AutoConfig

    where = source.path.parent if source.path.name == "config.json" else source.path
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"model.name_or_path: cannot read {source.path} ({exc})") from None


def load_model_config(recipe: Recipe, config_file: Path | None = None) -> PretrainedConfig:
    """The model's configuration, from config.json only (`--config FILE` when given; see `plan.source`)."""
    return read_config(find_config(recipe, config_file), recipe)


def meta_model(config: PretrainedConfig, recipe: Recipe) -> PreTrainedModel:
    """The architecture with every tensor on the `meta` device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if recipe.stage == "rm" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"trust_remote_code": recipe.model.trust_remote_code}
    if recipe.stage == "rm":
        config.num_labels = 1
    try:
        with torch.device("meta"):
            return auto.from_config(config, **kwargs)
    except (ValueError, KeyError) as exc:
        raise UserError(f"plan cannot build a {config.model_type} model from its config.json ({exc})") from None


def _output_head(model: PreTrainedModel) -> Any:
    return model.get_output_embeddings() or getattr(model, "score", None) or getattr(model, "classifier", None)


def _linear_counts(model: PreTrainedModel) -> tuple[int, int, bool]:
    """(weights bitsandbytes would quantize: every Linear but the output head, the head's weight, gated MLP?)."""
    from torch import nn

    head = _output_head(model)
    quantizable, gated = 0, False
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            quantizable += module.weight.numel()
            gated = gated or name.endswith(("gate_proj", "w3", "gate_up_proj"))
    head_params = head.weight.numel() if head is not None and hasattr(head, "weight") else 0
    return quantizable, head_params, gated


def _freeze_trainable(model: PreTrainedModel, recipe: Recipe) -> int:
    from llmtune.modeling import freeze_all_but

    spec = recipe.method.freeze
    freeze_all_but(model, spec.trainable_layers, spec.trainable_modules, head=recipe.stage == "rm")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for param in model.parameters():
        param.requires_grad_(True)
    return trainable


def _lora_facts(model: PreTrainedModel, recipe: Recipe) -> tuple[int, int, tuple[tuple[str, int], ...]]:
    """(adapter parameters, trainable full copies from modules_to_save, targets of layer 0 with in_features)."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from llmtune.modeling import lora_config

    task = "SEQ_CLS" if recipe.stage == "rm" else "CAUSAL_LM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lora_config(recipe.method, task), low_cpu_mem_usage=True)
    except ValueError as exc:
        raise UserError(f"method.lora.target_modules: {exc}") from None
    adapters = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n)
    copies = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n)
    targets = []
    for name, module in peft_model.named_modules():
        match = LAYER_INDEX.search(name)
        if isinstance(module, LoraLayer) and match and match[1] == "0" and hasattr(module, "in_features"):
            targets.append((name.rsplit(".", 1)[-1], int(module.in_features)))
    return adapters, copies, tuple(targets)


def inspect_model(config: PretrainedConfig, recipe: Recipe) -> ModelFacts:
    """Shapes and exact parameter counts (total, per method) of the recipe's model, without any weights."""
    from llmtune.jobs.init_model import llama_param_count, rule_of_thumb_param_count
    from llmtune.modeling import decoder_layers

    text = config.get_text_config()
    hidden, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    model = meta_model(config, recipe)
    total = sum(p.numel() for p in model.parameters())
    quantizable, head_params, gated = _linear_counts(model)
    _, blocks = decoder_layers(model)
    largest = max(sum(p.numel() for p in block.parameters()) for block in blocks)
    freeze = _freeze_trainable(model, recipe) if recipe.method.kind == "freeze" else 0
    adapters, copies, targets = _lora_facts(model, recipe)
    closed = llama_param_count(text) if text.model_type in CLOSED_FORM_TYPES and recipe.stage != "rm" else None
    return ModelFacts(
        model_type=text.model_type,
        vocab=text.vocab_size,
        hidden=hidden,
        layers=layers,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        intermediate=getattr(text, "intermediate_size", None) or 4 * hidden,
        gated_mlp=gated,
        total_params=total,
        quantizable_params=quantizable,
        head_params=head_params,
        largest_layer_params=largest,
        closed_form=closed,
        rule_of_thumb=rule_of_thumb_param_count(text.vocab_size, hidden, layers),
        freeze_trainable=freeze,
        adapter_params=adapters,
        lora_copies=copies,
        lora_targets=targets,
        lora_rank=recipe.method.lora.r,
    )
