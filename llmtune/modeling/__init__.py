"""Spec -> object adapters: `load` turns a recipe's model section into a tokenizer and a model, `methods` makes
the right parameters trainable (full, freeze, LoRA, QLoRA). Both are re-exported here, the package's public face."""

from llmtune.modeling.load import (
    Head,
    TaskType,
    auto_cpu_bf16,
    cpu_has_native_bf16,
    has_cuda,
    keep_4bit_weights_trainable_on_cpu,
    load_model,
    load_tokenizer,
    model_dir,
    quantization_config,
    refuse_remote_code,
    resolve_dtype,
    resolve_local,
    stored_dtype,
)
from llmtune.modeling.methods import (
    apply_method,
    check_lora_targets,
    check_method,
    count_parameters,
    decoder_layers,
    describe_parameters,
    freeze_all_but,
    lora_config,
)

__all__ = [
    "Head",
    "TaskType",
    "apply_method",
    "auto_cpu_bf16",
    "check_lora_targets",
    "check_method",
    "count_parameters",
    "cpu_has_native_bf16",
    "decoder_layers",
    "describe_parameters",
    "freeze_all_but",
    "has_cuda",
    "keep_4bit_weights_trainable_on_cpu",
    "load_model",
    "load_tokenizer",
    "lora_config",
    "model_dir",
    "quantization_config",
    "refuse_remote_code",
    "resolve_dtype",
    "resolve_local",
    "stored_dtype",
]
