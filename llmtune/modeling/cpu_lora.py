"""A CPU LoRA branch that costs what its matrix products cost.

peft computes a LoRA layer's update as `lora_B(lora_A(dropout(x.to(A.dtype)))) * scaling`. On a CPU, with the base
in bf16 and the adapters in fp32, a profile of one training step of a 30-layer, 576-hidden Llama (LoRA on every
linear layer, dropout 0.05, batch 8 x 256) put 45% of the step outside any matrix product: `aten::bernoulli_` (the
dropout mask, drawn one float at a time: 18%), the multiplications and divisions that apply it (16%) and the fp32
copies of the input (11%), while the LoRA and base products together were 21%. Autograd also kept, per adapted
layer, an fp32 copy of the input, an fp32 mask and the fp32 dropped-out input: 12 bytes an input element, on
every layer, for the backward pass.

`speed_up_lora` replaces the forward of each plain LoRA layer (nn.Linear or a bitsandbytes 4-bit base, one or
more vanilla adapters; not DoRA or other variants, not merged or disabled adapters, not mixed-adapter batches)
with `LoraBranch`, which computes the same function:

- the dropout mask is drawn as random bits (four 15-bit draws per 64-bit word of the generator, so about a
  quarter of the generator calls of `bernoulli_`), kept with probability 1 - round(p x 32768) / 32768, and stored
  as one byte an element;
- the kept input is scaled by nothing: 1 / (1 - p) is applied to the rank-r product instead of the input;
- backward keeps the input as it came (no copy: the tensor is shared with the other layers that read it) and
  rebuilds the masked input when it needs it;
- on a float32 input the products are float32, as peft computes them; on a bfloat16 input (a bf16 base, which
  `model.dtype: auto` picks for CPU LoRA where the CPU has bf16 units) they run in bfloat16 with the fp32 adapters
  rounded to it, as they would under torch.autocast: bit-identical to peft under autocast, and the adapters and
  their gradients stay float32 (`tests/test_cpu_lora.py`).

The same 30-layer step, decoder layers only, one thread: 7.9 s with peft's forward, 5.9 s with this one; with
activation checkpointing 11.9 s and 8.6 s.

Masks come from torch's default generator, so a seeded run repeats itself, activation checkpointing replays them,
and a resumed run continues them; they are not the masks `nn.Dropout` would draw. `train.cpu_fast_lora: false`
keeps peft's forward.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

_BITS = 32768  # each mask draw is 15 random bits


def drop_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True (dropped) with probability p' = round(p * 2^15) / 2^15; and p'."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each: four 15-bit fields
    drop = round(p * _BITS)
    return ((words.view(torch.int16)[:n] & (_BITS - 1)) < drop).view(shape), drop / _BITS


def _kept(x: torch.Tensor, drop: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype` with the dropped elements zeroed (a new tensor when anything is dropped)."""
    if drop is None:
        return x.to(dtype)
    return x.masked_fill(drop, 0.0) if x.dtype == dtype else x.to(dtype).masked_fill_(drop, 0.0)


class LoraBranch(torch.autograd.Function):
    """scale * (dropout(x) @ A.T) @ B.T for x of shape (..., in), A (r, in), B (out, r).

    With x in float32 (or A not float32) every product is in A's dtype, as peft computes it, and the result is in
    A's dtype. With x in bfloat16 and float32 adapters (a bf16 base) the products run in bfloat16 with the adapters
    rounded to it, as under torch.autocast (mixed precision): the result is bfloat16, the adapters' gradients
    float32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float, scale: float) -> torch.Tensor:
        dtype = x.dtype if x.dtype == torch.bfloat16 and a.dtype == torch.float32 else a.dtype
        drop, p = drop_mask(x.shape, p) if p > 0 else (None, 0.0)
        h = _kept(x, drop, dtype) @ a.to(dtype).t()
        if p:
            h.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(x, drop, a, b, h)
        ctx.p, ctx.scale, ctx.dtype = p, scale, dtype
        return (h @ b.to(dtype).t()).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, drop, a, b, h = ctx.saved_tensors
        dtype = ctx.dtype
        g = grad.to(dtype).flatten(0, -2) * ctx.scale
        grad_b = (g.t() @ h.flatten(0, -2)).to(b.dtype) if ctx.needs_input_grad[2] else None
        gh = g @ b.to(dtype)
        if ctx.p:
            gh.mul_(1.0 / (1.0 - ctx.p))
        grad_a = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_a = (gh.t() @ _kept(x, drop, dtype).flatten(0, -2)).to(a.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (gh @ a.to(dtype)).view(*x.shape[:-1], a.size(1))
            if drop is not None:
                grad_x = grad_x.masked_fill_(drop, 0.0)
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_a, grad_b, None, None


def _fast_path(layer: Any, x: torch.Tensor, kwargs: dict) -> bool:
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None or x.device.type != "cpu":
        return False
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in layer.lora_variant or layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
            return False
        if not isinstance(layer.lora_dropout[name], (torch.nn.Dropout, torch.nn.Identity)):
            return False
    return True


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not _fast_path(self, x, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    kwargs.pop("adapter_names", None)
    result = self.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        dropout = self.lora_dropout[name]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        result = result + LoraBranch.apply(x, a, b, p, self.scaling[name])
    return result.to(dtype)


def speed_up_lora(model: Any) -> int:
    """Give every plain LoRA linear layer of `model` the CPU branch (layers it cannot take keep peft's path at
    call time); returns how many layers got it."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        plain = isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
        if isinstance(module, LoraLayer) and plain and type(module).__name__ in ("Linear", "Linear4bit"):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
