"""Load a model for eval, generate, chat and export: `--model PATH_OR_ID [--adapter DIR]`, no recipe needed.

A run directory works as either argument: with adapter_config.json it is an adapter (its base comes from the adapter
config, or --model), with config.json a full model. A QLoRA adapter's base is quantized to 4 bits exactly as in
training and then dequantized, so eval, generation and the merged export all compute the function that was trained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmtune import console
from llmtune.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmtune.schema import Recipe

Head = Literal["causal_lm", "sequence_classification"]
DTYPES = ("auto", "checkpoint", "float32", "bfloat16", "float16")


@dataclass
class Loaded:
    """A model ready for inference, its tokenizer, and where it came from (for tables and model cards)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base: str
    adapter: Path | None
    head: Head
    recipe: Recipe | None
    label: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def adapter_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--adapter: cannot read {path / 'adapter_config.json'} ({exc})") from None


def run_recipe(path: Path) -> Recipe | None:
    """The resolved recipe a training run wrote beside its adapter or model (None when there is none)."""
    file = path / "recipe.yaml"
    if not file.is_file():
        return None
    from llmtune.recipe import load_recipe

    try:
        return load_recipe(file)
    except UserError as exc:
        console.warn(f"ignoring {file}: {exc}")
        return None


def split_spec(model: str | None, adapter: str | None) -> tuple[str | None, Path | None]:
    """(base model, adapter dir): a --model that is an adapter dir counts as --adapter; the base may stay None."""
    if model is None and adapter is None:
        raise UserError("give --model (a model directory or Hub id) and/or --adapter (a PEFT adapter directory)")
    if adapter is None and model is not None and (Path(model).expanduser() / "adapter_config.json").is_file():
        return None, Path(model).expanduser()
    if adapter is None:
        return model, None
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"--adapter: {adapter} is not a PEFT adapter directory (no adapter_config.json in it)")
    return model, path


def _adapter_base(adapter: Path, recipe: Recipe | None) -> str:
    from llmtune.hub.local import looks_like_path

    base = adapter_config(adapter).get("base_model_name_or_path")
    candidates = [base, recipe.model.name_or_path if recipe else None]
    for name in candidates:
        if name and (Path(name).expanduser().is_dir() or not looks_like_path(name)):
            return name
    raise UserError(f"--adapter {adapter}: its base model {base!r} is not found; pass the base with --model PATH_OR_ID")


def _head(model_dir: Path, adapter: Path | None) -> Head:
    if adapter is not None and adapter_config(adapter).get("task_type") == "SEQ_CLS":
        return "sequence_classification"
    try:
        archs = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        archs = []
    return "sequence_classification" if any(a.endswith("ForSequenceClassification") for a in archs) else "causal_lm"


def _dtype(dtype: str, recipe: Recipe | None) -> torch.dtype | str:
    """An explicit dtype; for a QLoRA run its compute dtype; "checkpoint" keeps the saved one; "auto" picks bf16 on
    a GPU that supports it, else float32."""
    import torch

    if dtype not in ("auto", "checkpoint"):
        return getattr(torch, dtype)
    if recipe is not None and recipe.method.kind == "qlora":
        return getattr(torch, recipe.method.qlora.compute_dtype)
    if dtype == "checkpoint":
        return "auto"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer_for(model_dir: Path, adapter: Path | None, recipe: Recipe | None, trust: bool) -> Any:
    """The adapter's saved tokenizer when it has one (a run saves it), else the base's; pad token guaranteed."""
    from transformers import AutoTokenizer

    source = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {source} ({exc})") from None
    if not tokenizer.chat_template and recipe is not None and recipe.model.chat_template:
        from llmtune.data.templates import resolve_chat_template

        tokenizer.chat_template = resolve_chat_template(tokenizer, recipe.model.chat_template)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer in {source} has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _head_kwargs(head: Head, labels: list[str] | None, adapter: Path | None) -> dict[str, Any]:
    """A classifier's label names (labels.json of a cls run); a reward adapter's single score; else the config's."""
    if head != "sequence_classification":
        return {}
    if labels:
        from llmtune.infer.classify import label_maps

        id2label, label2id = label_maps(labels)
        return {"num_labels": len(labels), "id2label": id2label, "label2id": label2id}
    return {"num_labels": 1} if adapter is not None else {}


def _load_weights(
    model_dir: Path, head: Head, dtype: Any, recipe: Recipe | None, trust: bool, head_kwargs: dict[str, Any]
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model: {model_dir} is not a model directory (no config.json in it)")
    if not any(model_dir.glob("*.safetensors")):
        raise UserError(f"--model: {model_dir} has no safetensors weights (pickle .bin weights are not loaded)")
    from safetensors import SafetensorError

    auto = AutoModelForSequenceClassification if head == "sequence_classification" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust, "use_safetensors": True, **head_kwargs}
    quantized = recipe is not None and recipe.method.kind == "qlora"
    if quantized:
        from llmtune.modeling import quantization_config

        kwargs["quantization_config"] = quantization_config(recipe.method)
    try:
        model = auto.from_pretrained(model_dir, **kwargs)
    except (OSError, SafetensorError) as exc:
        raise UserError(f"--model: cannot load the weights in {model_dir} ({exc}); download the model again") from None
    if quantized:
        model = model.dequantize(dtype=dtype)
    return model


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No weight-loading bars, load reports, library deprecation warnings or bitsandbytes kernel notices, unless -v."""
    if console.verbosity() >= console.VERBOSE:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the load report: a reward head restored by its adapter is not "MISSING"
    bnb = logging.getLogger("bitsandbytes")
    level = bnb.level
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import peft  # noqa: F401  (imports bitsandbytes, which logs a CPU-kernel notice once)

            yield
    finally:
        bnb.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_for_inference(
    model: str | None,
    adapter: str | None = None,
    *,
    revision: str = "main",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    endpoint: str | None = None,
    device: str | None = None,
) -> Loaded:
    """Base model (+ adapter, active) in eval mode on `device` (default: cuda when present), with its tokenizer."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    base, adapter_dir = split_spec(model, adapter)
    if adapter_dir is not None and not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UserError(f"--adapter: {adapter_dir} has no adapter_model.safetensors (pickle adapters are not loaded)")
    recipe = run_recipe(adapter_dir) if adapter_dir is not None else None
    if base is None:
        base = _adapter_base(adapter_dir, recipe)
    from llmtune.hub.local import resolve_dir

    model_dir = resolve_dir(base, revision, endpoint, "--model")
    if recipe is None and adapter_dir is None:
        recipe = run_recipe(model_dir)
    trust_remote_code = trust_remote_code or bool(recipe and recipe.model.trust_remote_code)
    from llmtune.modeling import refuse_remote_code

    refuse_remote_code(
        model_dir, trust_remote_code, "llmtune runs such code only for a run whose recipe set model.trust_remote_code"
    )
    head = _head(model_dir, adapter_dir)
    tokenizer = load_tokenizer_for(model_dir, adapter_dir, recipe, trust_remote_code)
    from llmtune.infer.classify import read_labels

    head_kwargs = _head_kwargs(head, read_labels(adapter_dir or model_dir), adapter_dir)
    with quiet_loading():
        loaded = _load_weights(
            model_dir, head, _dtype(dtype, recipe if adapter_dir else None), recipe, trust_remote_code, head_kwargs
        )
        if adapter_dir is not None:
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, str(adapter_dir))
    if head == "sequence_classification" and loaded.config.pad_token_id is None:
        loaded.config.pad_token_id = tokenizer.pad_token_id
    loaded.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    label = str(adapter_dir) if adapter_dir is not None else base
    return Loaded(loaded, tokenizer, base, adapter_dir, head, recipe, label)
