"""The training methods as parameter surgery: full (all trainable), freeze (last layers), LoRA / QLoRA adapters,
with the checks that catch a target that matches nothing before a step is spent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.errors import UserError
from llmtune.modeling.load import TaskType, resolve_local
from llmtune.schema import MethodSpec, Recipe

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel


def lora_config(method: MethodSpec, task_type: TaskType) -> LoraConfig:
    """The peft LoraConfig for method.lora (peft initialises B to zero, so training starts at the base model)."""
    from peft import LoraConfig

    spec = method.lora
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        modules_to_save=list(spec.modules_to_save) or None,
        task_type=task_type,
    )


def decoder_layers(model: PreTrainedModel) -> tuple[str, list]:
    """The model's stack of transformer blocks (model.layers, transformer.h, ...), found generically.

    The longest ModuleList whose items share one class; with num_hidden_layers in the config, its length must match.
    """
    from torch import nn

    expected = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    candidates = [
        (name, list(module))
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if expected is not None:
        candidates = [c for c in candidates if len(c[1]) == expected] or candidates
    if not candidates:
        raise UserError(f"method freeze: cannot find the transformer layers of {type(model).__name__}")
    return max(candidates, key=lambda c: len(c[1]))


def freeze_all_but(model: PreTrainedModel, trainable_layers: int, trainable_modules: list[str], head: bool) -> None:
    """Freeze every parameter except those of the last N layers, names containing a trainable_modules entry,
    and (for classification models) the head, which is new and must learn."""
    name, layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise UserError(
            f"method.freeze.trainable_layers is {trainable_layers} but the model has only {len(layers)} layers"
        )
    prefixes = tuple(f"{name}.{i}." for i in range(len(layers) - trainable_layers, len(layers)))
    names = [n for n, _ in model.named_parameters()]
    for sub in trainable_modules:
        if not any(sub in n for n in names):
            modules = ", ".join(sorted({n.split(".")[-2] for n in names if "." in n}))
            raise UserError(
                f"method.freeze.trainable_modules: {sub!r} matches no parameter name (module names: {modules})"
            )
    base_prefix = f"{model.base_model_prefix}."
    for n, param in model.named_parameters():
        keep = n.startswith(prefixes) or any(sub in n for sub in trainable_modules)
        param.requires_grad_(keep or (head and not n.startswith(base_prefix)))
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("method freeze: nothing is trainable; set trainable_layers above 0 or trainable_modules")


def apply_method(model: PreTrainedModel, recipe: Recipe, task_type: TaskType = "CAUSAL_LM") -> PreTrainedModel:
    """Make the right parameters trainable: all (full), the last layers (freeze) or LoRA adapters (lora, qlora)."""
    method = recipe.method
    if method.kind == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method.kind == "freeze":
        spec = method.freeze
        freeze_all_but(model, spec.trainable_layers, spec.trainable_modules, head=task_type == "SEQ_CLS")
        return model
    from peft import PeftModel, get_peft_model

    if recipe.model.adapter:
        path = resolve_local(recipe.model.adapter, "main", recipe, what="model.adapter")
        if not (path / "adapter_config.json").is_file():
            raise UserError(f"model.adapter: {path} is not a PEFT adapter (no adapter_config.json in it)")
        if not (path / "adapter_model.safetensors").is_file() and not recipe.model.allow_pickle:
            raise UserError(
                f"model.adapter: {path} has no adapter_model.safetensors; pickle weights (.bin) can run code when "
                "loaded: convert them to safetensors, or set model.allow_pickle: true if you trust their author"
            )
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    check_lora_targets(model, method)
    return get_peft_model(model, lora_config(method, task_type))


def check_lora_targets(model: PreTrainedModel, method: MethodSpec) -> None:
    """Every name in method.lora.target_modules and modules_to_save must match a module (as peft matches them):
    peft silently ignores a misspelt one as long as another matches."""
    names = [name for name, _ in model.named_modules() if name]
    lora = method.lora
    targets = [] if lora.target_modules == "all-linear" else list(lora.target_modules)
    for key, wanted in (("target_modules", targets), ("modules_to_save", lora.modules_to_save)):
        for target in wanted:
            if not any(name == target or name.endswith(f".{target}") for name in names):
                known = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in names if not name[-1].isdigit()}))
                raise UserError(f"method.lora.{key}: {target!r} matches no module of the model (names: {known})")


def check_method(recipe: Recipe) -> None:
    """Cross-checks between model and method, done before anything heavy is loaded."""
    if recipe.model.adapter and recipe.method.kind not in ("lora", "qlora"):
        raise UserError(
            f"model.adapter is set but method.kind is {recipe.method.kind!r}; an adapter is trained further with "
            "method.kind: lora or qlora"
        )
    adapter = recipe.model.adapter
    from llmtune.hub.local import looks_like_path

    if adapter and looks_like_path(adapter) and not Path(adapter).expanduser().is_dir():
        raise UserError(f"model.adapter: {adapter} is not a directory (an earlier run's output dir with the adapter)")
    if recipe.method.kind == "qlora":
        from llmtune.errors import require_module

        require_module("bitsandbytes", "method.kind qlora")


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight counts as its unpacked size, as peft counts it."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2 * (param.element_size() if hasattr(param, "element_size") else 1)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def describe_parameters(trainable: int, total: int) -> str:
    """'trainable 123,456 / 1,234,567 (10.0%)'."""
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable {trainable:,} / {total:,} ({share:.1f}%)"
