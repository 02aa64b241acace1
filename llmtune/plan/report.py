"""`llmtune plan` output: the fit verdict, suggestions re-estimated one change at a time, and the rich table."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from llmtune.plan.memory import EIGHT_BIT, GIB, Estimate, ModelFacts, Setup, estimate
from llmtune.schema import Recipe
from llmtune.training.accelerate import Sharding

ZERO3 = "recipes/accelerate/zero3.yaml"
ZERO3_OFFLOAD = "recipes/accelerate/zero3_offload.yaml"
MAX_GPUS = 8


@dataclass(frozen=True)
class Step:
    """One suggested change (cumulative with the steps before it) and the peak it gives."""

    change: str
    overrides: tuple[str, ...]
    setup: Setup
    estimate: Estimate


@dataclass(frozen=True)
class Plan:
    facts: ModelFacts
    setup: Setup
    estimate: Estimate
    budget: int | None
    steps: tuple[Step, ...]
    config_origin: str = ""

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.estimate.peak <= self.budget


def _batch_step(f: ModelFacts, s: Setup, budget: int) -> tuple[str, tuple[str, ...], Setup] | None:
    """The largest smaller power-of-two batch that fits (else 1), with grad_accum raised to keep the global batch."""
    if s.batch_size == 1:
        return None
    size = 2 ** int(math.log2(s.batch_size - 1)) if s.batch_size > 1 else 1
    while size > 1 and estimate(f, replace(s, batch_size=size)).peak > budget:
        size //= 2
    accum = math.ceil(s.batch_size * s.grad_accum / size)
    change = f"batch_size {s.batch_size} -> {size} with grad_accum {s.grad_accum} -> {accum} (same global batch)"
    return (
        change,
        (f"train.batch_size={size}", f"train.grad_accum={accum}"),
        replace(s, batch_size=size, grad_accum=accum),
    )


def _candidates(f: ModelFacts, s: Setup, budget: int) -> list[tuple[str, tuple[str, ...], Setup] | None]:
    """The next possible changes, least disruptive first; None where a change does not apply."""
    sh = s.sharding
    gpu = s.device == "gpu"
    out: list[tuple[str, tuple[str, ...], Setup] | None] = [
        None if s.checkpointing >= 1 else
        ("gradient checkpointing on", ("train.gradient_checkpointing=true",), replace(s, checkpointing=1.0)),
        ("ZeRO-3 sharding", (f"train.accelerate_config={ZERO3}",), _shard(s, "zero3", sh.nproc))
        if gpu and sh.nproc > 1 and not sh.shards_weights else None,
        _batch_step(f, s, budget),
        None if not gpu or sh.deepspeed or s.optimizer in EIGHT_BIT or s.method not in ("full", "freeze") else
        ("8-bit AdamW (paged)", ("train.optimizer=paged_adamw_8bit",), replace(s, optimizer="paged_adamw_8bit")),
        None if s.method not in ("full", "freeze") else
        ("LoRA adapters instead of full weights", ("method.kind=lora",), replace(s, method="lora")),
        None if not gpu or s.method != "lora" else
        ("QLoRA: 4-bit base", ("method.kind=qlora",), replace(s, method="qlora", optimizer=_qlora_optimizer(s))),
    ]  # fmt: skip
    if gpu and sh.nproc < MAX_GPUS:
        procs = sh.nproc * 2
        out.append(
            (f"{procs} GPUs with ZeRO-3", (f"train.nproc={procs}", f"train.accelerate_config={ZERO3}"),
             _shard(s, "zero3", procs))
        )  # fmt: skip
    if gpu and not sh.offload_params:
        offload = replace(s, sharding=Sharding("zero3", sh.nproc, True, True))
        out.append(("ZeRO-3 with CPU offload of optimizer and parameters",
                    (f"train.accelerate_config={ZERO3_OFFLOAD}",), offload))  # fmt: skip
    if s.seq_len > 256:
        half = s.seq_len // 2
        out.append((f"max_length {s.seq_len} -> {half} (changes the data)", (f"data.max_length={half}",),
                    replace(s, seq_len=half)))  # fmt: skip
    return out


def _qlora_optimizer(s: Setup) -> str:
    return "paged_adamw_8bit" if s.optimizer == "adamw_torch_fused" else s.optimizer


def _shard(s: Setup, kind: str, nproc: int) -> Setup:
    return replace(s, sharding=Sharding(kind, nproc))  # type: ignore[arg-type]


def suggest(f: ModelFacts, s: Setup, budget: int) -> tuple[Step, ...]:
    """Greedy: apply the first change that lowers the peak, re-estimate, repeat until it fits or nothing helps."""
    steps: list[Step] = []
    current, peak = s, estimate(f, s).peak
    while peak > budget and len(steps) < 12:
        for candidate in _candidates(f, current, budget):
            if candidate is None:
                continue
            change, overrides, nxt = candidate
            result = estimate(f, nxt)
            if result.peak < peak * 0.99:
                steps.append(Step(change, overrides, nxt, result))
                current, peak = nxt, result.peak
                break
        else:
            break
    return tuple(steps)


def make_plan(
    recipe: Recipe,
    device: str = "gpu",
    nproc: int | None = None,
    budget: int | None = None,
    config_file: Path | None = None,
) -> Plan:
    """Read the model's config (`config_file` overrides where from), count, estimate and (with a budget that is
    exceeded) suggest."""
    from llmtune.modeling import auto_cpu_bf16
    from llmtune.plan.inspect import inspect_model, read_config
    from llmtune.plan.memory import checkpoint_share, resolve_setup
    from llmtune.plan.source import find_config

    source = find_config(recipe, config_file)
    config = read_config(source, recipe)
    facts = inspect_model(config, recipe)
    stored = str(getattr(config.get_text_config(), "dtype", None) or "").removeprefix("torch.")
    cpu_bf16 = device == "cpu" and auto_cpu_bf16(recipe.method.kind, stored)
    setup = resolve_setup(recipe, device, nproc, cpu_bf16)  # type: ignore[arg-type]
    setup = replace(setup, checkpointing=checkpoint_share(facts, setup))  # auto decided as the run decides it
    result = estimate(facts, setup)
    steps = suggest(facts, setup, budget) if budget is not None and result.peak > budget else ()
    return Plan(facts, setup, result, budget, steps, f"{source.path} ({source.origin})")


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB or n == 0 else f"{n / 2**20:.0f} MiB"


def _weights_note(f: ModelFacts, s: Setup) -> str:
    dtype = {2: "bf16", 4: "fp32"}[s.weight_bytes]
    if s.method == "qlora":
        bits = f"{s.quant_bits:.3f}".rstrip("0")
        rest = f.total_params - f.quantizable_params
        note = f"NF4 {bits} bit x {f.quantizable_params:,} + fp32 x {rest:,} (embeddings, norms, head: peft upcasts)"
    else:
        note = f"{dtype} x {f.total_params:,}"
    if s.method in ("lora", "qlora"):
        note += f" + adapters fp32 x {f.adapter_params:,}"
    if s.stage == "dpo" and s.method in ("full", "freeze"):
        note += " + frozen reference copy"
    return note + (f"; {s.sharding.label}" if s.sharding.kind != "none" else "")


def _optimizer_note(s: Setup) -> str:
    if s.sharding.deepspeed:
        return "DeepSpeed: fp32 master weights + fp32 Adam moments" + (
            ", on CPU" if s.sharding.offload_optimizer else ""
        )
    if s.optimizer in EIGHT_BIT:
        return f"{s.optimizer}: 2 bytes per parameter" + (
            " (paged: can spill to CPU)" if "paged" in s.optimizer else ""
        )
    return f"{s.optimizer}: two moments in the parameter dtype"


def _rows(plan: Plan) -> list[tuple[str, str, str]]:
    f, s, e = plan.facts, plan.setup, plan.estimate
    other = estimate(f, replace(s, checkpointing=0.0 if s.checkpointing else 1.0)).activations
    act_note = (
        f"{'with' if s.checkpointing else 'without'} gradient checkpointing; "
        f"{'without' if s.checkpointing else 'with'} it: {gib(other)}"
    )
    rows = [
        ("weights", gib(e.weights), _weights_note(f, s)),
        ("gradients", gib(e.gradients), f"{f.trainable(s.method):,} trainable parameters"),
        ("optimizer states", gib(e.optimizer), _optimizer_note(s)),
        ("activations", gib(e.activations), act_note),
        ("output head temporaries", gib(e.head_temp), "TRL's chunked log-prob head (no full logits)"),
    ]
    if e.overhead:
        rows.append(("CUDA context + allocator", gib(e.overhead), "0.5 GiB + 5% of the peak"))
    if e.host:
        rows.append(("(on CPU, offloaded)", gib(e.host), "host memory, not on the device"))
    rows.append(("peak per device", gib(e.peak), f"during {e.phase}"))
    return rows


def render(plan: Plan, recipe: Recipe) -> None:
    """Print the parameter counts, the memory table, the verdict and the suggestions to stdout."""
    from rich.markup import escape
    from rich.table import Table

    from llmtune.console import stdout
    from llmtune.modeling import describe_parameters

    f, s = plan.facts, plan.setup
    out = stdout()
    if plan.config_origin:
        out.print(f"config.json: {escape(plan.config_origin)}")
    out.print(f"[bold]{recipe.model.name_or_path}[/bold]  {f.model_type}: vocab {f.vocab:,}, hidden {f.hidden:,}, "
              f"{f.layers} layers, q/kv width {f.q_dim}/{f.kv_dim}, intermediate {f.intermediate:,}")  # fmt: skip
    gap = (f.total_params - f.rule_of_thumb) / f.rule_of_thumb
    out.print(f"parameters: {f.total_params:,} exact (meta-device build)")
    if f.closed_form is not None:
        out.print(f"            {f.closed_form:,} closed form for LLaMA (llmtune.jobs.init_model.llama_param_count)")
    out.print(f"            {f.rule_of_thumb:,} rule of thumb V·H + 12·H²·L ({gap:+.1%} from exact)")
    out.print(f"{s.method}: {describe_parameters(f.trainable(s.method), f.trained_total(s.method))}")
    tokens = f"{s.rows} x {s.seq_len} tokens" + (
        " (chosen + rejected)" if s.stage in ("rm", "dpo", "orpo", "cpo") else ""
    )
    dtype = "bf16 autocast" if s.autocast else ("bf16" if s.weight_bytes == 2 else "fp32")
    table = Table(title=f"Estimated peak memory per {s.device.upper()} ({dtype}, {tokens}, {s.sharding.label})")
    for column in ("component", "size", "what"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for row in _rows(plan):
        table.add_row(*row)
    out.print(table)
    _print_verdict(plan)


def _print_verdict(plan: Plan) -> None:
    from llmtune.console import stdout

    out = stdout()
    if plan.budget is None:
        return
    if plan.fits:
        out.print(f"[green]fits[/green] in {gib(plan.budget)} ({gib(plan.budget - plan.estimate.peak)} to spare)")
        return
    out.print(f"[red]does not fit[/red] in {gib(plan.budget)}: needs about {gib(plan.estimate.peak)}")
    for i, step in enumerate(plan.steps, 1):
        verdict = "fits" if step.estimate.peak <= plan.budget else "still too big"
        out.print(
            f"  {i}. {step.change}: {gib(step.estimate.peak)} ({verdict})  --set {' --set '.join(step.overrides)}"
        )
    if not plan.steps or plan.steps[-1].estimate.peak > plan.budget:
        out.print("  nothing above makes it fit on one device of this size; use bigger GPUs or a smaller model")
