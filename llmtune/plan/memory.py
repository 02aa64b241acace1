"""`llmtune plan`: parameter counts and a per-device peak-memory estimate, from a recipe and config.json alone.

No weights are read: the model is built on the `meta` device to count parameters exactly and to find what LoRA
would wrap. Every assumption of the memory model is written down in docs/plan.md; tests/test_plan.py checks it
against the measured peak of real training steps on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmtune.errors import UserError
from llmtune.modeling.checkpointing import auto_share, saved_activation_bytes
from llmtune.schema import Recipe
from llmtune.stages.args import resolve_optimizer
from llmtune.training.accelerate import Sharding, sharding_from_config

Device = Literal["gpu", "cpu"]
DEFAULT_OPTIMIZER = "adamw_torch_fused"  # transformers' default when a recipe names none
GIB = 1024**3
NF4_BITS = {True: 4 + 8 / 64 + 32 / (64 * 256), False: 4 + 32 / 64}  # by double_quant: 4.127 / 4.5 bits
FUSED_TOKENS_PER_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
FUSED_VOCAB_PER_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
CPU_FUSED_HEAD_ROWS = 256  # llmtune.modeling.fused_head.CHUNK_ROWS
CPU_HEAD_TEMPS = 7  # fp32 tile-sized temporaries alive at once in TRL's torch fallback of the fused head backward
CUDA_CONTEXT = GIB // 2
ALLOCATOR_SLACK = 0.05
LORA_INPUT_GROUPS = {
    "q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
    "query_key_value": "attn_in", "o_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in",
    "gate_up_proj": "mlp_in", "w1": "mlp_in", "w3": "mlp_in", "down_proj": "mlp_mid", "w2": "mlp_mid",
}  # fmt: skip
EIGHT_BIT = ("adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit")
FP32_STATES = ("paged_adamw_32bit", "adamw_bnb_32bit", "paged_adamw")


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about the model: shapes from config.json, counts from a meta build."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    q_dim: int
    kv_dim: int
    intermediate: int
    gated_mlp: bool
    total_params: int
    quantizable_params: int
    head_params: int
    largest_layer_params: int
    closed_form: int | None
    rule_of_thumb: int
    freeze_trainable: int
    adapter_params: int
    lora_copies: int
    lora_targets: tuple[tuple[str, int], ...]
    lora_rank: int

    def trainable(self, kind: str) -> int:
        """Trainable parameters under a method: all (full), last layers (freeze), adapters (+ saved copies)."""
        if kind == "full":
            return self.total_params
        if kind == "freeze":
            return self.freeze_trainable
        return self.adapter_params + self.lora_copies

    def trained_total(self, kind: str) -> int:
        """All parameters of the model as trained: the base, plus LoRA's adapters and modules_to_save copies (what
        `llmtune.modeling.count_parameters` counts on the real model, so `plan` and `sft` print the same share)."""
        return self.total_params + (self.adapter_params + self.lora_copies if kind in ("lora", "qlora") else 0)


@dataclass(frozen=True)
class Setup:
    """The run as the memory model sees it, resolved from a recipe (and what a suggestion changes)."""

    stage: str
    method: str
    device: Device
    weight_bytes: int
    autocast: bool
    quant_bits: float
    optimizer: str
    batch_size: int
    grad_accum: int
    seq_len: int
    checkpointing: float | None
    """The share of decoder layers recomputed in the backward pass (0: none, 1: all; None: auto, see share())."""
    masked: bool
    lora_dropout: bool
    trainable_layers: int
    sharding: Sharding

    @property
    def rows(self) -> int:
        """Sequences per forward pass: chosen and rejected are concatenated for rm and dpo."""
        return self.batch_size * (2 if self.stage in ("rm", "dpo", "orpo", "cpo") else 1)

    @property
    def mask_width(self) -> int:
        """Keys per query in the (rows, 1, length, length) mask sdpa and eager get; flash attention needs none.

        Padded rows get a padding mask, packed rows a block-diagonal one built from their position_ids.
        """
        return self.seq_len if self.masked else 0

    @property
    def act_bytes(self) -> int:
        """Bytes of one saved activation element: the compute dtype; fp32 for qlora (peft upcasts the rest)."""
        if self.method == "qlora":
            return 4
        return 2 if self.autocast or self.weight_bytes == 2 else 4


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per device and its parts; `peak` = weights + optimizer + the largest of the phase terms."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    head_temp: float
    overhead: float
    peak: float
    phase: str
    host: float


def resolve_setup(recipe: Recipe, device: Device = "gpu", nproc: int | None = None, cpu_bf16: bool = False) -> Setup:
    """Dtypes, batch, sharding and optimizer as a run of this recipe on `device` would use them; `cpu_bf16`: auto
    gives bf16 on this CPU (llmtune.modeling.auto_cpu_bf16)."""
    if device == "cpu" and recipe.method.kind == "qlora":
        raise UserError("plan --device cpu: method.kind qlora needs a GPU (bitsandbytes 4-bit); estimate for gpu")
    dtype = recipe.model.dtype
    weight_bytes = 4 if dtype == "float32" or (dtype == "auto" and device == "cpu" and not cpu_bf16) else 2
    mixed = recipe.train.mixed_precision
    autocast = mixed in ("bf16", "fp16") or (mixed == "auto" and device == "gpu")
    procs = nproc or recipe.train.nproc
    return Setup(
        stage=recipe.stage,
        method=recipe.method.kind,
        device=device,
        weight_bytes=weight_bytes,
        autocast=autocast,
        quant_bits=NF4_BITS[recipe.method.qlora.double_quant],
        optimizer=resolve_optimizer(recipe, device == "gpu", warn=False) or DEFAULT_OPTIMIZER,
        batch_size=recipe.train.batch_size,
        grad_accum=recipe.train.grad_accum,
        seq_len=recipe.data.max_length,
        checkpointing=None if recipe.train.gradient_checkpointing == "auto" else recipe.train.checkpoint_share,
        masked=recipe.model.attn_implementation != "flash_attention_2",
        lora_dropout=recipe.method.lora.dropout > 0,
        trainable_layers=recipe.method.freeze.trainable_layers,
        sharding=sharding_from_config(recipe.train.accelerate_config, procs),
    )


def checkpoint_share(f: ModelFacts, s: Setup) -> float:
    """s.checkpointing, with auto (None) decided as a run decides it (llmtune.modeling.checkpointing)."""
    if s.checkpointing is not None:
        return s.checkpointing
    return auto_share(saved_activation_bytes(f.layers, f.hidden, f.intermediate, s.rows * s.seq_len, s.act_bytes))


def _trainable_bytes(s: Setup) -> int:
    """Bytes per trainable element: adapters are fp32 (peft upcasts them); FSDP with autocast keeps fp32 shards."""
    if s.method in ("lora", "qlora") or (s.sharding.kind == "fsdp" and s.autocast):
        return 4
    return s.weight_bytes


def weights_bytes(f: ModelFacts, s: Setup) -> tuple[float, float]:
    """(device, host) bytes of the weights, the LoRA adapters and a DPO reference copy."""
    wb = 4 if s.sharding.kind == "fsdp" and s.autocast and s.method in ("full", "freeze") else s.weight_bytes
    if s.method == "qlora":
        base = f.quantizable_params * s.quant_bits / 8 + (f.total_params - f.quantizable_params) * 4
    else:
        base = f.total_params * wb
    extra = f.adapter_params * 4 + f.lora_copies * s.weight_bytes if s.method in ("lora", "qlora") else 0
    reference = f.total_params * s.weight_bytes if s.stage == "dpo" and s.method in ("full", "freeze") else 0
    sh = s.sharding
    if not sh.shards_weights:
        return base + extra + reference, 0.0
    gathered = 2 * f.largest_layer_params * s.weight_bytes
    if sh.kind == "fsdp":  # FSDP2 keeps the root unit (embeddings, final norm, head) gathered from forward to backward
        gathered += _root_params(f) * s.weight_bytes
    if sh.offload_params:
        return gathered + extra, base + reference
    return (base + reference) / sh.nproc + gathered + extra, 0.0


def _root_params(f: ModelFacts) -> int:
    """Parameters outside the decoder layers (the unit FSDP2 wraps at the root)."""
    return max(f.total_params - f.layers * f.largest_layer_params, 0)


def optimizer_bytes(f: ModelFacts, s: Setup) -> tuple[float, float, float]:
    """(gradients, optimizer states on device, states on host) for the trainable parameters."""
    n, pb, sh = f.trainable(s.method), _trainable_bytes(s), s.sharding
    if sh.deepspeed:
        per = 12 if pb == 2 else 8
    elif s.optimizer in EIGHT_BIT:
        per = 2
    elif s.optimizer in FP32_STATES:
        per = 8
    elif s.optimizer == "sgd":
        per = 0
    else:
        per = 2 * pb
    grads = n * pb * (2 if sh.kind == "ddp" else 1) / (sh.nproc if sh.shards_grads else 1)
    if sh.kind == "fsdp" and s.method == "full":  # the root's gradients are whole until its reduce-scatter
        grads += _root_params(f) * pb * (1 - 1 / sh.nproc)
    states = n * per / (sh.nproc if sh.shards_states else 1)
    return (grads, 0.0, states) if sh.offload_optimizer else (grads, states, 0.0)


def layer_activation_bytes(f: ModelFacts, s: Setup, base_trainable: bool) -> float:
    """Bytes autograd keeps per token for one Llama-style decoder layer (derivation in docs/plan.md)."""
    a, h = s.act_bytes, f.hidden
    kv = f.q_dim if s.masked else f.kv_dim
    attention = a * (2 * f.q_dim + 2 * kv)
    mlp = (4 if f.gated_mlp else 2) * f.intermediate
    norms = 2 * 4 * h
    mask = a * s.mask_width
    if base_trainable:
        return norms + mask + a * 4 * h + attention + a * mlp
    total = norms + mask + attention + a * (mlp - f.intermediate)
    drop_mask = 4 if s.device == "cpu" else 1
    seen: set[str] = set()
    for name, width in f.lora_targets:
        group = LORA_INPUT_GROUPS.get(name, name)
        if s.autocast:
            total += (2 + (drop_mask if s.lora_dropout else 0)) * width + 2 * f.lora_rank
            continue
        if s.lora_dropout:
            total += (4 + drop_mask) * width
        elif a != 4:
            total += 4 * width
        elif group not in seen:
            total += 0 if group == "attn_out" else 4 * width
        seen.add(group)
        total += 4 * f.lora_rank
    return total


def head_bytes(f: ModelFacts, s: Setup) -> tuple[float, float, float]:
    """(saved, forward temporaries, backward temporaries) of the final norm and output head (TRL's fused head)."""
    a, h, tokens = s.act_bytes, f.hidden, s.rows * s.seq_len
    norm_trainable = s.method == "full"
    saved = tokens * (4 * h + (a * h if norm_trainable else 0) + a * h)
    if s.stage == "rm":
        return saved, 0.0, tokens * a * h
    n_all = s.rows * (s.seq_len - 1)
    n, vc = min(n_all, FUSED_TOKENS_PER_TILE), min(f.vocab, FUSED_VOCAB_PER_TILE)
    buf = n * FUSED_VOCAB_PER_TILE * (2 if s.autocast else a)
    grad_in = n_all * h * (4 + a) + (f.head_params * 4 if s.method == "full" else 0)
    if s.device == "cpu" and s.method in ("lora", "qlora"):  # llmtune.modeling.fused_head: a few fp32 row chunks
        rows = min(n_all, CPU_FUSED_HEAD_ROWS)
        return saved + n_all * h * a, 3 * rows * f.vocab * 4 + rows * f.vocab * a, n_all * h * (4 + a)
    if s.device == "cpu":
        return saved, buf + 3 * n * vc * 4, buf + CPU_HEAD_TEMPS * n * vc * 4 + n * vc + grad_in
    return saved, buf, buf + grad_in


def estimate(f: ModelFacts, s: Setup) -> Estimate:
    """Peak memory per device: weights + optimizer states + the largest of forward, backward and step needs."""
    weights, host_weights = weights_bytes(f, s)
    grads, states, host_states = optimizer_bytes(f, s)
    tokens = s.rows * s.seq_len
    depth = s.trainable_layers if s.method == "freeze" else f.layers
    per_layer = layer_activation_bytes(f, s, base_trainable=s.method in ("full", "freeze"))
    saved_head, head_fwd, head_bwd = head_bytes(f, s)
    mask = tokens * s.mask_width
    share = checkpoint_share(f, s)
    kept = share * s.act_bytes * f.hidden + (1 - share) * per_layer
    layers_saved = depth * tokens * kept
    activations = layers_saved + saved_head + mask
    carried = grads if s.grad_accum > 1 else 0
    step_temp = f.trainable(s.method) * _trainable_bytes(s) if s.device == "gpu" and s.optimizer == "adamw_torch" else 0
    phases = {
        "forward (output head)": activations + head_fwd + carried,
        "backward (output head)": activations + head_bwd + carried,
        "optimizer step": grads + step_temp,
    }
    if share:
        phases["backward (recomputing a layer)"] = activations + tokens * per_layer + grads
    phase = max(phases, key=phases.__getitem__)
    peak = weights + states + phases[phase]
    overhead = CUDA_CONTEXT + ALLOCATOR_SLACK * peak if s.device == "gpu" else 0.0
    head_temp = max(head_fwd, head_bwd)
    return Estimate(
        weights, grads, states, activations, head_temp, overhead, peak + overhead, phase, host_weights + host_states
    )
