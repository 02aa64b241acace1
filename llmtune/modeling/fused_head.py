"""A CPU LM head for the log-probabilities of sft, pt, dpo and kto: labelled positions only, a few row-chunks of
full-vocabulary logits at a time.

TRL (1.16) patches the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`). On CUDA it runs Triton
kernels over the labelled positions only; elsewhere it falls back to torch ops that score *every* position (prompt
and padding included), in tiles of 4096 rows x 32768 vocabulary columns, upcast each tile to float32 and build
several float32 temporaries per tile, recompute the projection in the backward pass, and multiply the gradient in
float32 even for bfloat16 weights (so without the CPU's bf16 matrix units). Measured on a 576-hidden, 49152-vocab
Llama, batch 8 x 256 tokens: that head was about a third of the step on CPU and its temporaries reached gigabytes
(bench/real_model.py has the figures).

`add_cpu_fused_lm_head` wraps that patched forward: when the call asks for `fused_lm_head=True` on a CPU tensor and
the head is a plain frozen projection (LoRA, QLoRA's unquantized head, freeze without the head), it

- scores only the positions whose label is not -100,
- projects them in row chunks in the weights' dtype (bf16 runs on AMX / AVX512-BF16), softmaxes each chunk in fp32,
- computes the gradient with respect to the hidden states in the forward pass (one more matmul, in the weights'
  dtype), so the backward pass is a scale by the incoming per-token gradient instead of a second projection,
- returns the same `FusedCausalLMOutput` fields SFTTrainer reads (log_probs, entropy, is_top1, label_mask).

Anything else (a trainable or biased head, logit scaling or softcapping, MoE router losses, CUDA) goes to TRL's path.
"""

from __future__ import annotations

import types
from typing import Any

# Rows of full-vocabulary fp32 logits held at once: 256 x 49152 x 4 B = 48 MiB per temporary
CHUNK_ROWS = 256


def _projection(hidden: Any, weight: Any, targets: Any, chunk_rows: int, metrics: bool, want_grad: bool) -> tuple:
    """Per-row log p(target), entropy, is-top-1, mean logit and (with want_grad) d log p(target) / d hidden, chunk
    by chunk (no autograd)."""
    import torch

    n = hidden.size(0)
    log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    mean_logits = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    is_top1 = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    grad = torch.empty(n, hidden.size(1), dtype=hidden.dtype, device=hidden.device) if want_grad else None
    for start in range(0, n, chunk_rows):
        end = min(start + chunk_rows, n)
        h, y = hidden[start:end], targets[start:end].unsqueeze(1)
        z = (h @ weight.t()).float()
        if metrics:
            is_top1[start:end] = z.argmax(-1) == y.squeeze(1)
            mean_logits[start:end] = z.mean(-1)
        lse = torch.logsumexp(z, -1, keepdim=True)
        log_p = z.sub_(lse)  # in place: z is now log-softmax
        log_probs[start:end] = log_p.gather(1, y).squeeze(1)
        p = log_p.exp()
        if metrics:
            entropy[start:end] = -(p * log_p).sum(-1)
        del log_p, z
        if grad is not None:  # d log p_y / d z = onehot(y) - p, so d log p_y / d h = (onehot(y) - p) @ W
            p.neg_().scatter_add_(1, y, torch.ones_like(y, dtype=p.dtype))
            grad[start:end] = p.to(weight.dtype) @ weight
    return log_probs, entropy, is_top1, mean_logits, grad


def _function() -> Any:
    import torch

    class LinearLogProb(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk_rows, metrics):
            # a forward without autograd (DPO's reference, evaluation) skips the gradient's matrix product
            log_probs, entropy, is_top1, mean_logits, grad = _projection(
                hidden.detach(), weight, targets, chunk_rows, metrics, want_grad=ctx.needs_input_grad[0]
            )
            ctx.save_for_backward(grad)
            ctx.mark_non_differentiable(entropy, is_top1, mean_logits)
            return log_probs, entropy, is_top1, mean_logits

        @staticmethod
        def backward(ctx, grad_log_probs, *_):
            (grad,) = ctx.saved_tensors
            if grad_log_probs is None or grad is None:
                return None, None, None, None, None
            return (grad * grad_log_probs.unsqueeze(1).to(grad.dtype)), None, None, None, None

    return LinearLogProb


def _plain_head(text_config: Any) -> bool:
    """True when the logits are exactly hidden @ W.T: no scaling, softcapping or MoE router loss."""
    scaled = any(
        getattr(text_config, name, None) not in (None, 1.0)
        for name in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )
    return not scaled and not getattr(text_config, "output_router_logits", False)


def add_cpu_fused_lm_head(model: Any, chunk_rows: int = CHUNK_ROWS, metrics: bool = True) -> bool:
    """Wrap `model.forward` (already patched by TRL's `add_fused_lm_head`) with the CPU path described above.

    `model` is the base model (under PEFT: `peft_model.get_base_model()`). Returns False, changing nothing, when the
    model's head is not a plain projection. With metrics=False, entropy and is_top1 come back as zeros.
    """
    text_config = model.config.get_text_config()
    if not _plain_head(text_config):
        return False
    previous = model.forward
    function = _function()

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        weight = head.weight
        usable = (
            fused_lm_head
            and labels is not None
            and shift_labels is None
            and weight.device.type == "cpu"
            and getattr(head, "bias", None) is None
            and not weight.requires_grad
            and not kwargs.get("output_router_logits")
        )
        if not usable:
            return previous(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        from trl.trainer.utils import FusedCausalLMOutput

        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        rows = hidden[mask]
        if rows.dtype != weight.dtype:
            rows = rows.to(weight.dtype)
        log_p, entropy, is_top1, mean_logits = function.apply(rows, weight, labels[mask], chunk_rows, metrics)
        # masked_scatter keeps the output connected to the graph even when no label is valid
        log_probs = log_p.new_zeros(mask.shape).masked_scatter(mask, log_p)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            is_top1=is_top1.new_zeros(mask.shape).masked_scatter(mask, is_top1),
            mean_logits=mean_logits.new_zeros(mask.shape).masked_scatter(mask, mean_logits),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True


def install_cpu_head(trainer: Any) -> bool:
    """Give a TRL trainer's model (and its separate reference model, if any) this head. The caller
    (llmtune.training.run) has ruled out CUDA and sharded weights; DPO's WPO weighting, which needs log sum p^2,
    keeps TRL's head."""
    if getattr(trainer, "use_weighting", False):
        return False
    model = trainer.model
    installed = add_cpu_fused_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if getattr(trainer, "ref_model", None) is not None:
        add_cpu_fused_lm_head(trainer.ref_model)
    return installed
