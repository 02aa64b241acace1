"""Loading what a recipe names: the model directory (checked, remote code refused), tokenizer, dtype, 4-bit config,
weights. Every stage loads models the same way through these."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import MethodSpec, Recipe

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

Head = Literal["causal_lm", "sequence_classification"]
TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]


def resolve_local(name: str, revision: str, recipe: Recipe, what: str = "model.name_or_path") -> Path:
    """A recipe's model or adapter as a local directory (llmtune.hub.resolve_dir, fetched once per process)."""
    return _resolve(name, revision, recipe.hub.endpoint, what)


@functools.lru_cache(maxsize=8)
def _resolve(name: str, revision: str, endpoint: str | None, what: str) -> Path:
    from llmtune.hub.local import resolve_dir

    return resolve_dir(name, revision, endpoint, what)


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


def cpu_has_native_bf16() -> bool:
    """True on a CPU with bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo (Linux).

    There torch's bf16 matmuls (oneDNN) run about 4x faster than float32 ones; without them bf16 is emulated and
    slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def stored_dtype(path: Path) -> str | None:
    """The dtype the checkpoint's weights are stored in, as config.json says (dtype, or torch_dtype before v5)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    value = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return value if isinstance(value, str) else None


def auto_cpu_bf16(kind: str, stored: str | None) -> bool:
    """THE CPU rule of `model.dtype: auto`: bf16 for lora/qlora of a checkpoint stored in bf16 on a bf16 CPU
    (`plan` uses it too)."""
    return kind in ("lora", "qlora") and stored == "bfloat16" and cpu_has_native_bf16()


def resolve_dtype(spec_dtype: str, method: MethodSpec, stored: str | None = None) -> torch.dtype:
    """Weights dtype: an explicit one as is; auto is bfloat16 on a GPU that supports it, and on a CPU with native bf16
    (cpu_has_native_bf16) for lora/qlora when the checkpoint is stored in bfloat16 (`stored`); else float32.

    On CPU the base goes bf16 only where that loses nothing: it is frozen, its stored weights are already bf16, and
    peft keeps the LoRA adapters (the trained weights and their optimizer state) in float32. With qlora this is the
    dtype of the layers left unquantized (norms, embeddings, head).
    """
    import torch

    if spec_dtype != "auto":
        return getattr(torch, spec_dtype)
    if has_cuda():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if auto_cpu_bf16(method.kind, stored) else torch.float32


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
        "dtype": resolve_dtype(recipe.model.dtype, recipe.method, stored_dtype(path)),
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
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpoint_share(recipe) > 0)
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


def checkpoint_share(recipe: Recipe, say: bool = False) -> float:
    """The recipe's share of layers to recompute; auto decided from the model's config.json, the batch and the
    compute dtype (with `say`, printed when above 0)."""
    if recipe.train.gradient_checkpointing != "auto":
        return recipe.train.checkpoint_share
    from transformers import AutoConfig

    from llmtune.modeling.checkpointing import GIB, auto_share, config_activation_bytes, describe_share

    path = model_dir(recipe)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=recipe.model.trust_remote_code)
    except OSError as exc:
        raise UserError(f"model.name_or_path: cannot read the model's configuration in {path} ({exc})") from None
    dtype = resolve_dtype(recipe.model.dtype, recipe.method, stored_dtype(path))
    act_bytes = 4 if recipe.method.kind == "qlora" else dtype.itemsize
    rows = recipe.train.batch_size * (2 if recipe.stage in ("rm", "dpo", "kto") else 1)
    saved = config_activation_bytes(config, rows * recipe.data.max_length, act_bytes)
    share = auto_share(saved)
    if share and say:
        console.info(f"gradient checkpointing (auto): {describe_share(share)}, for about {saved / GIB:.1f} GiB "
                     "of activations a step would keep; train.gradient_checkpointing: false turns it off")  # fmt: skip
    return share
