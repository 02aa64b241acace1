"""Spec -> object adapters: tokenizer, model, BitsAndBytesConfig, LoraConfig, freezing.

Small functions that each translate one part of the recipe into the object transformers or peft expects,
so stages stay short and every stage loads models the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import MethodSpec, Recipe

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

Head = Literal["causal_lm", "sequence_classification"]
TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def resolve_local(name: str, revision: str, recipe: Recipe, what: str = "model.name_or_path") -> Path:
    """A local directory as is; a Hub id fetched (once) through llmtune.hub; a missing path is a UserError."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what}: {name} is a file; expected a model directory (with config.json)")
        return path
    if _looks_like_path(name):
        raise UserError(f"{what}: {name} does not exist (neither a local directory nor a Hub id)")
    return _fetch(name, revision, recipe.hub.endpoint)


@functools.lru_cache(maxsize=8)
def _fetch(name: str, revision: str, endpoint: str | None) -> Path:
    """A Hub model's local snapshot, fetched once per process (tokenizer, data and model all ask for it)."""
    from llmtune.hub import ensure_local

    return Path(ensure_local(name, revision, "model", endpoint))


def model_dir(recipe: Recipe) -> Path:
    """The local directory of the recipe's base model, checked to hold a model."""
    path = resolve_local(recipe.model.name_or_path, recipe.model.revision, recipe)
    if not (path / "config.json").is_file():
        raise UserError(f"model.name_or_path: {path} is not a model directory (no config.json in it)")
    refuse_remote_code(path, recipe.model.trust_remote_code, "set model.trust_remote_code: true only if you trust it")
    _check_weights(path, recipe.model.allow_pickle)
    return path


def refuse_remote_code(path: Path, trusted: bool, fix: str) -> None:
    """Refuse a model that ships Python code (auto_map in config.json or tokenizer_config.json) unless trusted:
    transformers would run it, or silently swap in its built-in class when the model type is a known one."""
    if trusted:
        return
    import json

    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((path / name).read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if auto_map:
            values = [v for value in dict(auto_map).values() for v in ([value] if isinstance(value, str) else value)]
            code = sorted({v for v in values if isinstance(v, str)})
            raise UserError(
                f"{path} ships its own Python code ({name} auto_map: {', '.join(code)}), which would run when it is "
                f"loaded; {fix}"
            )


def load_tokenizer(recipe: Recipe) -> PreTrainedTokenizerBase:
    """The model's tokenizer with the recipe's chat template applied and a pad token guaranteed."""
    from transformers import AutoTokenizer

    path = model_dir(recipe)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load a tokenizer from {path} ({exc})") from None
    from llmtune.data.templates import resolve_chat_template

    template = resolve_chat_template(tokenizer, recipe.model.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer in {path} has neither a pad token nor an eos token to pad with")
        console.warn(f"the tokenizer has no pad token; padding with its eos token {tokenizer.eos_token!r}")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(spec_dtype: str, method: MethodSpec) -> torch.dtype:
    """Weights dtype: an explicit one as is; auto is bfloat16 on a GPU that supports it, else float32.

    With qlora this is the dtype of the layers left unquantized (norms, embeddings, head).
    """
    import torch

    if spec_dtype != "auto":
        return getattr(torch, spec_dtype)
    if has_cuda() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(method: MethodSpec) -> BitsAndBytesConfig | None:
    """4-bit base for qlora (NF4 or FP4, optional double quantization); None for every other method."""
    if method.kind != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.qlora.quant_type,
        bnb_4bit_use_double_quant=method.qlora.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, method.qlora.compute_dtype),
    )


def _check_weights(path: Path, allow_pickle: bool) -> None:
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(
            f"model.name_or_path: {path} has config.json but no weights (*.safetensors); point it at a complete model "
            "directory, or download the model again"
        )
    if allow_pickle or any(path.glob("*.safetensors")):
        return
    raise UserError(
        f"model.name_or_path: {path} has only pickle weights (.bin), which can run code when loaded; "
        "convert them to safetensors, or set model.allow_pickle: true if you trust the model's author"
    )


def load_model(recipe: Recipe, *, head: Head = "causal_lm", num_labels: int = 1) -> PreTrainedModel:
    """Load the base model as the recipe says (dtype, attention, 4-bit for qlora), ready for apply_method."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = model_dir(recipe)
    kwargs: dict = {
        "dtype": resolve_dtype(recipe.model.dtype, recipe.method),
        "trust_remote_code": recipe.model.trust_remote_code,
        "use_safetensors": None if recipe.model.allow_pickle else True,
    }
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    quant = quantization_config(recipe.method)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if has_cuda():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    import pickle

    from safetensors import SafetensorError

    try:
        if head == "sequence_classification":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, SafetensorError) as exc:
        raise UserError(
            f"model.name_or_path: cannot load the weights in {path} ({exc}); the files may be incomplete or corrupt: "
            "download the model again"
        ) from None
    except pickle.UnpicklingError:
        raise UserError(
            f"model.name_or_path: cannot load the weights in {path}: its pickle holds objects other than tensors, "
            "which torch refuses to load (they could run code); convert the model to safetensors where you trust it"
        ) from None
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        keep_4bit_weights_trainable_on_cpu(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    return model


def keep_4bit_weights_trainable_on_cpu(model: PreTrainedModel) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference at the first no-grad eval forward.

    bitsandbytes 0.50 (nn/modules.py, Linear4bit.forward) repacks them for AVX512-BF16 CPUs; afterwards every
    forward, training included, takes gemv_4bit, which has no autograd kernel: gradients through the frozen base
    silently go wrong after an evaluation, and layers whose out_features is not a multiple of 32 fail outright.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


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
    if adapter and _looks_like_path(adapter) and not Path(adapter).expanduser().is_dir():
        raise UserError(f"model.adapter: {adapter} is not a directory (an earlier run's output dir with the adapter)")
    if recipe.method.kind == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("method.kind qlora needs bitsandbytes: pip install bitsandbytes")


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
