"""`train.gradient_checkpointing: auto`: how many decoder layers to recompute, from the activations a step keeps.

Without checkpointing, a Llama-style decoder layer keeps for its backward pass, per token, about ten hidden-sized
and five intermediate-sized tensors in the compute dtype plus two float32 copies in its norms. Measured on a
30-layer, 576-hidden, 1536-intermediate model in bf16 at batch 8 x 256 (LoRA with llmtune's CPU branch): 2.1 GiB
more peak RSS without checkpointing than with it; this estimate gives 1.8 GiB. auto then picks:

| estimated saved activations | layers recomputed |
| --- | --- |
| up to 1 GiB | none (the fastest; every small run) |
| up to 4 GiB | every other layer (half the memory for about a fifth more time in the decoder) |
| above | all of them |

An explicit true / false / share always wins.
"""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
AUTO_TIERS = ((1 * GIB, 0.0), (4 * GIB, 0.5))


def saved_activation_bytes(layers: int, hidden: int, intermediate: int, tokens: int, act_bytes: int) -> float:
    """Activations a training step keeps without checkpointing (decoder layers only), for `tokens` per step."""
    return layers * tokens * (act_bytes * (10 * hidden + 5 * intermediate) + 8 * hidden)


def config_activation_bytes(config: Any, tokens: int, act_bytes: int) -> float:
    """saved_activation_bytes for a transformers config (its text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", 0) or 0
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    return saved_activation_bytes(getattr(text, "num_hidden_layers", 0) or 0, hidden, intermediate, tokens, act_bytes)


def auto_share(saved_bytes: float) -> float:
    """The share of decoder layers `auto` recomputes for that many bytes of saved activations."""
    return next((share for limit, share in AUTO_TIERS if saved_bytes <= limit), 1.0)


def describe_share(share: float) -> str:
    return {0.0: "off", 0.5: "every other layer", 1.0: "every layer"}.get(share, f"{share:.0%} of the layers")
