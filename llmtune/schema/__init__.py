"""THE recipe schema: pydantic models with unknown keys refused.

Each field's docstring is its documentation: docs/recipes.md is generated from these models
(`python -m llmtune.docgen`). Cross-field rules live next to the block they concern. The alignment sections
(dpo, kto, orpo, cpo, rl) live in `llmtune.schema.align`.
"""

from __future__ import annotations

import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from llmtune.schema.align import CpoSpec, DpoSpec, KtoSpec, OrpoSpec, RlSpec
from llmtune.schema.base import Strict
from llmtune.schema.stages import FORMATS_OF_STAGE, STAGE_BLOCKS, DataFormat, Stage


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The section model inside an annotation (`LoraSpec`, `list[DataSource]`, `X | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


class ModelSpec(Strict):
    name_or_path: str
    """A local model directory or a Hub id (fetched through `hub.endpoint`)."""
    revision: str = "main"
    """Branch, tag or commit of a Hub model."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto picks bfloat16 on a GPU that supports it, and for lora/qlora of a checkpoint stored in
    bfloat16 on a CPU with AVX512-BF16 or AMX (adapters stay float32); else float32."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author."""
    allow_pickle: bool = False
    """Allow loading pickle (.bin) weights when a model has no safetensors. Pickles can run code."""
    adapter: str | None = None
    """A PEFT adapter to start from (e.g. an earlier SFT run's output dir); trained further with LoRA."""
    chat_template: str | None = None
    """Chat template: null uses the tokenizer's own; a name (chatml, llama3) or a path to a Jinja file."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    """Attention kernel; null lets transformers choose."""


class LoraSpec(Strict):
    r: int = Field(16, gt=0)
    """Rank of the low-rank update B·A."""
    alpha: float = Field(32, gt=0)
    """Scaling numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    """Modules that get adapters: all-linear, or names such as [q_proj, v_proj]."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    modules_to_save: list[str] = []
    """Modules trained fully and saved with the adapter (e.g. [lm_head, embed_tokens] after adding tokens)."""


class FreezeSpec(Strict):
    trainable_layers: int = Field(2, ge=0)
    """Train only the last N transformer layers (plus trainable_modules); everything else is frozen."""
    trainable_modules: list[str] = []
    """Extra parameter-name substrings to train, e.g. [lm_head, norm]."""


class QLoraSpec(Strict):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen base: NF4 (normal float) or FP4."""
    double_quant: bool = True
    """Quantize the quantization constants too (about 0.37 bits per parameter saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype of the matmuls on dequantized weights."""
    optimizer: Literal["paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "adamw_torch"] = "paged_adamw_8bit"
    """Optimizer; paged ones move states to CPU under memory pressure (GPU only: falls back to adamw_torch)."""


class MethodSpec(Strict):
    kind: Literal["full", "freeze", "lora", "qlora"] = "lora"
    """full: every weight; freeze: last layers only; lora: adapters; qlora: adapters on a 4-bit base."""
    lora: LoraSpec = LoraSpec()
    """Adapter settings, used by lora and qlora."""
    freeze: FreezeSpec = FreezeSpec()
    """Used by freeze."""
    qlora: QLoraSpec = QLoraSpec()
    """Quantization of the base, used by qlora."""

    @model_validator(mode="after")
    def _qlora_needs_adapters(self) -> MethodSpec:
        if self.kind in ("full", "freeze") and "qlora" in self.model_fields_set:
            raise ValueError(
                f"method.qlora is set but method.kind is {self.kind!r}: a 4-bit base cannot be trained directly; "
                "use method.kind: qlora (LoRA adapters on the quantized base) or remove the qlora block"
            )
        return self


class DataSource(Strict):
    path: str
    """A local file (.jsonl .json .csv .parquet .txt), a `datasets` directory, or a Hub dataset id."""
    format: DataFormat | None = None
    """Row format; null detects it from the columns of the first row."""
    weight: float = Field(1.0, gt=0)
    """Mixing weight: 2.0 repeats the source twice, 0.5 keeps half of it (per epoch)."""
    max_samples: int | None = Field(None, gt=0)
    """Use at most this many rows (taken before weighting)."""
    split: str = "train"
    """Split of a Hub or `datasets` directory source."""
    subset: str | None = None
    """Configuration name of a Hub dataset."""
    revision: str = "main"
    """Revision of a Hub dataset."""
    columns: dict[str, str] = {}
    """Map our field names to the file's: {instruction: question, output: answer}."""


class DataSpec(Strict):
    train: list[DataSource] = Field(min_length=1)
    """Training sources, mixed by weight."""
    eval: list[DataSource] = []
    """Held-out sources; when empty, eval_ratio of the training rows is held out."""
    eval_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of training rows held out for evaluation when no eval sources are given."""
    max_length: int = Field(1024, gt=0)
    """Tokens per example (or per packed row); longer examples are truncated."""
    packing: bool | None = None
    """Pack several examples into one row (no attention across them where supported). Default: on for pt."""
    loss_on: Literal["all_assistant", "last_assistant", "all"] = "all_assistant"
    """Which tokens are trained in chat data: every assistant turn, only the last one, or everything."""
    bad_rows: Literal["error", "skip"] = "error"
    """A malformed row stops the run (error) or is skipped and counted (skip)."""
    system_prompt: str | None = None
    """A system message added to conversations that have none."""
    cache_dir: str = ".cache/llmtune"
    """Where tokenized datasets are cached, keyed by everything that affects them."""


class TrainSpec(Strict):
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `epochs` epochs."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the (weighted) training data."""
    batch_size: int = Field(4, gt=0)
    """Examples per device per forward pass."""
    grad_accum: int = Field(1, gt=0)
    """Forward passes per optimizer step."""
    lr: float = Field(2.0e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of steps spent warming up the learning rate."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 disables it."""
    optimizer: str | None = None
    """A transformers optimizer name (adamw_torch, adamw_8bit, paged_adamw_8bit, ...); null picks per method."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    gradient_checkpointing: bool | float | Literal["auto"] = "auto"
    """Recompute activations in the backward pass (less memory, more time): true for every decoder layer, a share
    in (0, 1) for that share, evenly spaced (0.5: every other layer). auto: none while a step keeps up to 1 GiB of
    activations (estimated from the model's shape, batch and max_length), every other layer up to 4 GiB, else all
    (llmtune.modeling.checkpointing; figures in docs/benchmarks.md)."""
    cpu_fused_head: bool = True
    """sft/pt/dpo/kto without CUDA, frozen head: llmtune's chunked LM head (llmtune.modeling.fused_head)."""
    cpu_fast_lora: bool = True
    """Without CUDA: LoRA layers run llmtune's branch (llmtune.modeling.cpu_lora); false keeps peft's forward."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on a GPU that supports it, otherwise none."""
    logging_steps: int = Field(10, gt=0)
    """Log the loss every N steps (to metrics.jsonl and the console)."""
    save_steps: int = Field(500, gt=0)
    """Write a checkpoint every N steps (the final model is always saved)."""
    save_total_limit: int | None = Field(2, gt=0)
    """Keep at most this many checkpoints."""
    eval_steps: int | None = Field(None, gt=0)
    """Evaluate every N steps; null evaluates at the end only."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio", "swanlab"]] = []
    """Experiment trackers to log to (each needs its extra, e.g. `pip install 'llmtune[mlflow]'`); the run is
    named after the output directory. Where they write is their own setting (TensorBoard: DIR/runs; the others:
    their environment variables, e.g. MLFLOW_TRACKING_URI)."""
    nproc: int = Field(1, gt=0)
    """Processes (GPUs) to train on; above 1 the run is relaunched under `accelerate launch`."""
    accelerate_config: str | None = None
    """An accelerate config file (see recipes/accelerate/) for multi-process runs."""
    extra: dict[str, Any] = {}
    """Escape hatch: extra keyword arguments for TRL's config (SFTConfig, DPOConfig, ...), passed as is."""

    @field_validator("gradient_checkpointing")
    @classmethod
    def _share(cls, value: bool | float | str) -> bool | float | str:
        if not isinstance(value, (bool, str)) and not 0 < value <= 1:
            raise ValueError("a share of the layers must be above 0 and at most 1 (or true / false)")
        return value

    @property
    def checkpoint_share(self) -> float:
        """The share of decoder layers recomputed, once training.run has decided `auto` (an error before)."""
        if self.gradient_checkpointing == "auto":
            raise ValueError("train.gradient_checkpointing: auto is decided by the run before it is read")
        return float(self.gradient_checkpointing)


class HubSpec(Strict):
    endpoint: str | None = None
    """Hub or mirror URL; HF_ENDPOINT in the environment wins over it, --endpoint wins over both."""

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip()) if value is not None else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"{value!r} is not an http(s) URL; write it like https://hf-mirror.com")
        return value


class OutputSpec(Strict):
    dir: str
    """Run directory: resolved recipe, checkpoints, final model or adapter, metrics."""
    overwrite: bool = False
    """Allow writing into a non-empty directory (its old contents are replaced)."""


class Recipe(Strict):
    """One training run."""

    description: str = ""
    """One line shown by `llmtune recipe list`."""
    stage: Stage
    """pt: continued pretraining; sft: supervised fine-tuning; rm: reward model; dpo (and its loss family), kto, orpo
    and cpo (and SimPO): offline preference optimisation; grpo, rloo: online RL against rewards (a reward model
    and/or checks); cls: sequence classification (a label per text)."""
    model: ModelSpec
    """The model to start from."""
    method: MethodSpec = MethodSpec()
    """What is trained: every weight, the last layers, or LoRA adapters (on a 4-bit base for qlora)."""
    data: DataSpec
    """Training and evaluation data: sources, formats, mixing, templates, masks, packing."""
    train: TrainSpec = TrainSpec()
    """Optimisation, checkpoints, logging and processes."""
    dpo: DpoSpec = DpoSpec()
    """DPO settings (stage dpo only)."""
    kto: KtoSpec = KtoSpec()
    """KTO settings (stage kto only)."""
    orpo: OrpoSpec = OrpoSpec()
    """ORPO settings (stage orpo only)."""
    cpo: CpoSpec = CpoSpec()
    """CPO and SimPO settings (stage cpo only)."""
    rl: RlSpec = RlSpec()
    """Online RL settings: rewards, sampling, KL (stages grpo and rloo only)."""
    hub: HubSpec = HubSpec()
    """Where Hub ids (models, datasets) are fetched from."""
    output: OutputSpec
    """Where the run is written."""

    @model_validator(mode="after")
    def _formats_fit_stage(self) -> Recipe:
        for group in ("train", "eval"):
            for i, src in enumerate(getattr(self.data, group)):
                allowed = FORMATS_OF_STAGE[self.stage]
                if src.format is not None and src.format not in allowed:
                    raise ValueError(
                        f"data.{group}[{i}].format is {src.format!r}, which stage {self.stage!r} cannot train on "
                        f"(allowed: {', '.join(allowed)})"
                    )
        for block, stages in STAGE_BLOCKS.items():
            if block in self.model_fields_set and self.stage not in stages:
                use = " or ".join(stages)
                raise ValueError(f"the {block} block is set but stage is {self.stage!r}; remove it or use stage: {use}")
        if self.stage in ("grpo", "rloo"):
            self.rl.check_for_stage(self.stage, self.train.batch_size * self.train.grad_accum)
        return self

    @property
    def packing(self) -> bool:
        """Packing as resolved: the recipe's choice, else on for pretraining only."""
        return self.data.packing if self.data.packing is not None else self.stage == "pt"
