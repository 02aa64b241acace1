"""The `llmtune` command line: one short function per command.

Heavy libraries (torch, transformers, trl, datasets, peft) are imported inside the command that needs them,
so `llmtune --help` starts instantly. A test keeps it that way.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmtune import __version__
from llmtune.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="llmtune",
    help="Fine-tune language models: pretrain, SFT, reward models and DPO, from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
recipe_app = typer.Typer(help="Validate, show and list recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set train.lr=1e-4 (repeatable).")]


def _version(value: bool) -> None:
    if value:
        print(f"llmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print debug output and library logs.")] = False,
) -> None:
    from llmtune import console

    console.set_verbosity(console.QUIET if quiet else console.VERBOSE if verbose else console.NORMAL)


def main() -> None:
    """Entry point: user errors become one message and exit code 2; bugs keep their traceback."""
    try:
        app()
    except UserError as exc:
        from llmtune import console

        console.error(str(exc))
        sys.exit(EXIT_USER_ERROR)


def _recipes_root() -> Path:
    """Shipped recipes: ./recipes when run from a checkout, else the one beside the installed package."""
    local = Path("recipes")
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / "recipes"


@recipe_app.command("validate")
def recipe_validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe against the schema; exit 2 with the problem if it is invalid."""
    from llmtune.distributed import check_launch
    from llmtune.recipe import load_recipe

    resolved = load_recipe(recipe, set_)
    check_launch(resolved, hardware=False)
    print(f"{recipe}: ok ({resolved.stage}, {resolved.method.kind}, model {resolved.model.name_or_path})")


@recipe_app.command("show")
def recipe_show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled)."""
    from llmtune.recipe import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(recipe, set_)), end="")


@recipe_app.command("list")
def recipe_list() -> None:
    """List the shipped recipes with their one-line descriptions."""
    from llmtune.recipe import describe_line

    root = _recipes_root()
    for path in sorted(root.rglob("*.yaml")):
        if "accelerate" in path.parts:
            continue
        print(f"{path.relative_to(root.parent)}  {describe_line(path)}")


@app.command("synth-data")
def synth_data(
    out_dir: Annotated[
        Path, typer.Argument(metavar="OUT_DIR", help="Directory to write the data files into.", show_default=False)
    ],
    train: Annotated[int, typer.Option("--train", min=1, help="Training rows per file.")] = 2000,
    eval_rows: Annotated[int, typer.Option("--eval", min=1, help="Held-out rows per eval file.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed writes the same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty directory.")] = False,
) -> None:
    """Write the built-in synthetic tasks in every supported format (SFT, preference, text), with eval splits."""
    from llmtune import console
    from llmtune.data import synth

    synth.ensure_writable_dir(out_dir, overwrite)
    for path in synth.write_builtin_data(out_dir, n_train=train, n_eval=eval_rows, seed=seed).values():
        console.info(f"wrote {path} ({synth.count_rows(path)} rows)")


@app.command("init-model")
def init_model_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Directory to write the model into.", show_default=False)],
    preset: Annotated[
        str, typer.Option("--preset", metavar="tiny|small", help="Model size preset.", show_default=False)
    ],
    corpus: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--corpus", metavar="FILE", help="Text or .jsonl file for the tokenizer (repeatable; default: built-in)."
        ),
    ] = None,
    vocab_size: Annotated[
        Optional[int], typer.Option("--vocab-size", metavar="N", help="Tokenizer size (default: preset's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed for the built-in corpus and the weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer and write a randomly initialised LLaMA of a preset size, offline."""
    from llmtune.init_model import init_model as build

    build(out, preset=preset, corpus=corpus, vocab_size=vocab_size, seed=seed, overwrite=overwrite)


RecipeOpt = Annotated[Path, typer.Option("--recipe", help="Recipe YAML file.", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the output dir's last checkpoint.")]
NprocOpt = Annotated[
    Optional[int],
    typer.Option(
        "--nproc", metavar="N", min=1, help="Processes (GPUs) on this machine; above 1 runs accelerate launch."
    ),
]
AccelOpt = Annotated[
    Optional[str], typer.Option("--accelerate-config", metavar="FILE", help="accelerate config (recipes/accelerate/).")
]
MachinesOpt = Annotated[int, typer.Option("--num-machines", metavar="N", min=1, help="Machines in a multi-node run.")]
RankOpt = Annotated[int, typer.Option("--machine-rank", metavar="R", min=0, help="This machine's rank (0: main).")]
MainIpOpt = Annotated[Optional[str], typer.Option("--main-process-ip", metavar="IP", help="Address of rank 0.")]
MainPortOpt = Annotated[Optional[int], typer.Option("--main-process-port", metavar="PORT", help="Port on rank 0.")]


def _train_command(command: str, recipe: Path, set_: list[str] | None, resume: bool, launch_opts=None) -> None:
    """The body shared by the training commands: load, check the stage matches, run (or launch N), print."""
    from llmtune import console, launch
    from llmtune.distributed import check_launch
    from llmtune.recipe import load_recipe

    opts = launch_opts or launch.LaunchOptions()
    sets = [*(set_ or []), *opts.overrides()]
    resolved = load_recipe(recipe, sets)
    if resolved.stage != command:
        raise UserError(f"recipe {recipe} has stage: {resolved.stage}; run llmtune {resolved.stage} --recipe {recipe}")
    if launch.wants_launch(resolved, opts):
        args = ["--recipe", str(recipe), *(x for s in sets for x in ("--set", s)), *(["--resume"] if resume else [])]
        code = launch.launch(command, args, resolved, opts)
        if code:
            raise typer.Exit(code)
        return
    check_launch(resolved, hardware=False)
    if launch.is_replica():
        console.set_verbosity(console.QUIET)
    from llmtune.train import run

    console.info(f"{command}: writing the run to {resolved.output.dir}")
    result = run(resolved, resume=resume)
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    evals = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    done = f"done: {result.steps} steps in {result.runtime_s:.1f}s, final loss {loss}{evals}"
    if not launch.is_replica():
        console.stdout().print(f"{done}; saved to {result.output_dir}")


def _launch_options(*values):  # noqa: ANN202 - returns llmtune.launch.LaunchOptions, imported lazily
    """The training commands' launch flags as one object (llmtune.launch is imported only here)."""
    from llmtune.launch import LaunchOptions

    return LaunchOptions(*values)


TRAINING_COMMANDS = {
    "sft": "Supervised fine-tuning on chat or instruction data (full, freeze, lora or qlora).",
    "pt": "Continued pretraining on plain text (every token trained, packed by default).",
    "rm": "Train a reward model (a scalar head on the base) on preference pairs: chosen must outscore rejected.",
    "dpo": "Direct preference optimisation against a frozen reference (the starting model unless dpo.reference).",
}


def _register_training_command(stage: str, summary: str) -> None:
    """The four training commands share one signature; each checks that the recipe's stage matches it."""

    def command(
        recipe: RecipeOpt,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        nproc: NprocOpt = None,
        accelerate_config: AccelOpt = None,
        num_machines: MachinesOpt = 1,
        machine_rank: RankOpt = 0,
        main_process_ip: MainIpOpt = None,
        main_process_port: MainPortOpt = None,
    ) -> None:
        opts = (nproc, accelerate_config, num_machines, machine_rank, main_process_ip, main_process_port)
        _train_command(stage, recipe, set_, resume, _launch_options(*opts))

    command.__doc__ = summary
    command.__name__ = stage
    app.command(stage)(command)


for _stage, _summary in TRAINING_COMMANDS.items():
    _register_training_command(_stage, _summary)


@app.command("bon")
def bon(
    model: Annotated[str, typer.Option("--model", metavar="M", help="Policy: model dir, Hub id or run dir.")],
    reward: Annotated[str, typer.Option("--reward", metavar="RM", help="Reward model: an `llmtune rm` output dir.")],
    prompts: Annotated[
        Path, typer.Option("--prompts", metavar="FILE", help="Prompts: .jsonl/.json/.csv/.parquet rows or a .txt.")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Writes best.jsonl, pairs.jsonl, scored.jsonl.")],
    n: Annotated[int, typer.Option("--n", metavar="N", help="Answers sampled per prompt.")] = 4,
    adapter: Annotated[Optional[str], typer.Option("--adapter", metavar="DIR", help="Adapter on --model.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", help="Sampling temperature.")] = 0.8,
    top_p: Annotated[Optional[float], typer.Option("--top-p", metavar="P", help="Nucleus sampling.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="Answer length cap.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="B", help="Prompts per batch.")] = 8,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Sampling seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --out.")] = False,
) -> None:
    """Best-of-N: sample N answers per prompt, score them with a reward model, write SFT and preference data."""
    from llmtune import console
    from llmtune.bon import BonOptions, best_of_n

    options = BonOptions(
        model, reward, prompts, out, adapter=adapter, n=n, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, overwrite=overwrite,
    )  # fmt: skip
    result = best_of_n(options)
    console.stdout().print(
        f"{result.prompts} prompts: {result.best} best answers, {result.pairs} pairs, {result.skipped} skipped; "
        f"wrote {', '.join(str(p) for p in result.files.values())}"
    )


@app.command("tokenize")
def tokenize(
    recipe: Annotated[Path, typer.Option("--recipe", help="Recipe YAML file.", show_default=False)],
    set_: SetOpt = None,
    show: Annotated[
        int, typer.Option("--show", metavar="N", min=0, help="Print N examples with the trained tokens marked.")
    ] = 0,
) -> None:
    """Apply template, loss masks, truncation and packing; cache the result and print its statistics."""
    from llmtune.data.report import tokenize_and_report
    from llmtune.recipe import load_recipe

    tokenize_and_report(load_recipe(recipe, set_), show)


class RepoType(str, Enum):
    model = "model"
    dataset = "dataset"


@app.command("download")
def download(
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="Hub repo id, e.g. org/name.", show_default=False)],
    repo_type: Annotated[RepoType, typer.Option("--repo-type", help="Kind of repo.")] = RepoType.model,
    revision: Annotated[str, typer.Option("--revision", metavar="REV", help="Branch, tag or commit.")] = "main",
    include: Annotated[
        Optional[list[str]], typer.Option("--include", metavar="GLOB", help="Fetch only matching files (repeatable).")
    ] = None,
    exclude: Annotated[
        Optional[list[str]], typer.Option("--exclude", metavar="GLOB", help="Skip matching files (repeatable).")
    ] = None,
    local_dir: Annotated[
        Optional[Path], typer.Option("--local-dir", metavar="DIR", help="Write files here instead of the HF cache.")
    ] = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option("--endpoint", metavar="URL", help="Hub or mirror URL (else HF_ENDPOINT, else llmtune.yaml)."),
    ] = None,
    token_file: Annotated[
        Optional[Path],
        typer.Option("--token-file", metavar="FILE", help="File holding the token (else HF_TOKEN, else hf login)."),
    ] = None,
    max_workers: Annotated[int, typer.Option("--max-workers", metavar="N", min=1, help="Parallel downloads.")] = 8,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be fetched and its size.")] = False,
) -> None:
    """Download a model or dataset from the Hub or a mirror: resumable, retried, every file verified."""
    from llmtune.stages.download import DownloadOptions, run

    run(DownloadOptions(repo_id, repo_type.value, revision, tuple(include or ()), tuple(exclude or ()), local_dir,
                        endpoint, token_file, max_workers, dry_run))  # fmt: skip


ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", metavar="PATH_OR_ID", help="Model dir, run dir or Hub id (default: the adapter's base)."),
]
AdapterOpt = Annotated[
    Optional[Path], typer.Option("--adapter", metavar="DIR", help="PEFT adapter dir (e.g. an SFT run) on the model.")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", metavar="auto|float32|bfloat16|float16", help="Weights dtype (auto: bf16 on GPU).")
]
EndpointOpt = Annotated[
    Optional[str], typer.Option("--endpoint", metavar="URL", help="Hub or mirror URL (else HF_ENDPOINT, llmtune.yaml).")
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", metavar="N", min=1, help="Tokens to generate at most.")]
TempOpt = Annotated[
    float, typer.Option("--temperature", metavar="T", min=0.0, help="0: greedy (or beam search); above 0: sampling.")
]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", metavar="K", help="Sample from the K likeliest tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", metavar="P", help="Sample from the nucleus of mass P.")]
BeamsOpt = Annotated[int, typer.Option("--num-beams", metavar="N", min=1, help="Beam search with N beams.")]
RepOpt = Annotated[float, typer.Option("--repetition-penalty", metavar="R", help="Above 1 discourages repeats.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", metavar="S", help="Seed for sampling (reproducible runs).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Examples per forward pass.")]


def _model_args(model: Optional[str], adapter: Optional[Path]) -> tuple[Optional[str], Optional[str]]:
    return model, str(adapter) if adapter is not None else None


@app.command("eval")
def eval_cmd(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    data: Annotated[Optional[str], typer.Option("--data", metavar="FILE", help="Eval data file (any format).")] = None,
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", metavar="R.yaml", help="Evaluate on this recipe's eval split.")
    ] = None,
    set_: SetOpt = None,
    fmt: Annotated[Optional[str], typer.Option("--format", metavar="FMT", help="Row format of --data.")] = None,
    compare: Annotated[
        Optional[list[str]], typer.Option("--compare", metavar="SPEC", help="Another model/run/adapter (repeatable).")
    ] = None,
    reference: Annotated[
        Optional[str], typer.Option("--reference", metavar="M", help="Reference model for the implicit DPO accuracy.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the numbers as JSON.")] = None,
    max_samples: Annotated[
        Optional[int], typer.Option("--max-samples", metavar="N", min=1, help="Evaluate the first N rows.")
    ] = None,
    batch_size: BatchOpt = 8,
    context: Annotated[
        Optional[int],
        typer.Option("--context", metavar="N", min=2, help="Text perplexity window (default: model max, <= 2048)."),
    ] = None,
    generate: Annotated[bool, typer.Option(help="Generate answers for chat data (exact match, ROUGE-L).")] = True,
    max_new_tokens: MaxNewOpt = 64,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Perplexity, bits per byte, generation, reward and DPO metrics of one or more models, in one table."""
    from llmtune import console
    from llmtune import eval_job as job
    from llmtune.generation import DecodeOptions
    from llmtune.recipe import load_recipe

    if (data is None) == (recipe is None):
        raise UserError("give exactly one of --data FILE or --recipe R.yaml (its eval split)")
    resolved = load_recipe(recipe, set_) if recipe else None
    if resolved is not None:
        rows = job.recipe_eval_data(resolved, max_samples)
    else:
        rows = job.read_eval_file(data, fmt, max_samples, endpoint)
    specs = job.plan_specs(*_model_args(model, adapter), list(compare or []), resolved)
    decode = DecodeOptions(max_new_tokens=max_new_tokens)
    options = job.EvalOptions(batch_size, context, generate, decode, dtype, endpoint)
    results = job.run_eval(specs, rows, options, reference)
    console.stdout().print(job.results_table(results, f"{rows.label} ({len(rows.rows)} {rows.kind} rows)"))
    if out is not None:
        job.write_results(out, rows, results)
        console.info(f"wrote {out}", markup=False)


@app.command("generate")
def generate_cmd(
    prompt: Annotated[
        Optional[list[str]], typer.Argument(metavar="[PROMPT]...", help="Prompts.", show_default=False)
    ] = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", metavar="FILE", help="Prompt file: .txt lines or .jsonl rows.")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain-text prompts, no chat template.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write JSONL results here.")] = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    num_beams: BeamsOpt = 1,
    repetition_penalty: RepOpt = 1.0,
    num_return_sequences: Annotated[int, typer.Option("--num-return-sequences", metavar="N", min=1)] = 1,
    seed: SeedOpt = None,
    batch_size: BatchOpt = 16,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Generate completions for prompts (arguments or a file), batched, greedy / beam search / sampling."""
    from llmtune.generation import DecodeOptions, generate, read_prompts, write_generations
    from llmtune.inference import load_for_inference

    texts = list(prompt or []) + (read_prompts(prompts) if prompts else [])
    if not texts:
        raise UserError("no prompts: pass them as arguments or with --prompts FILE")
    options = DecodeOptions(max_new_tokens, temperature, top_k, top_p, num_beams, repetition_penalty,
                            num_return_sequences, seed)  # fmt: skip
    options.check()
    loaded = load_for_inference(*_model_args(model, adapter), dtype=dtype, endpoint=endpoint)
    outputs = generate(loaded.model, loaded.tokenizer, texts, options, chat=not raw, batch_size=batch_size)
    write_generations(texts, outputs, out)


@app.command("chat")
def chat_cmd(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    system: Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="System message.")] = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    num_beams: BeamsOpt = 1,
    repetition_penalty: RepOpt = 1.0,
    seed: SeedOpt = None,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Talk to a model with its chat template, answers streamed; /reset starts over, /exit quits."""
    from llmtune.generation import DecodeOptions, chat_loop
    from llmtune.inference import load_for_inference

    options = DecodeOptions(max_new_tokens, temperature, top_k, top_p, num_beams, repetition_penalty, 1, seed)
    options.check()
    loaded = load_for_inference(*_model_args(model, adapter), dtype=dtype, endpoint=endpoint)
    chat_loop(loaded.model, loaded.tokenizer, options, system=system)


@app.command("export")
def export_cmd(
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Directory for the merged model.", show_default=False)
    ],
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", metavar="SIZE", help="Shard above this.")] = "5GB",
    dtype: Annotated[
        str, typer.Option("--dtype", metavar="checkpoint|float32|bfloat16|float16", help="Saved dtype.")
    ] = "checkpoint",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    eval_json: Annotated[
        Optional[list[Path]],
        typer.Option("--eval-json", metavar="FILE", help="JSON from `llmtune eval --out` for the model card."),
    ] = None,
    push: Annotated[Optional[str], typer.Option("--push", metavar="REPO", help="Upload to this Hub repo.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the pushed repo private.")] = False,
    endpoint: EndpointOpt = None,
) -> None:
    """Merge a LoRA/DoRA adapter into its base (a QLoRA base dequantized) and save a standalone model with a card."""
    from llmtune.export import export

    export(*_model_args(model, adapter), out, max_shard_size=max_shard_size, overwrite=overwrite, dtype=dtype,
           endpoint=endpoint, eval_json=eval_json, push=push, private=private)  # fmt: skip


class PlanDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


@app.command("plan")
def plan_cmd(
    recipe: RecipeOpt,
    set_: SetOpt = None,
    gpu_memory: Annotated[
        Optional[str], typer.Option("--gpu-memory", metavar="SIZE", help="Memory per device to fit in, e.g. 24GiB.")
    ] = None,
    nproc: Annotated[
        Optional[int], typer.Option("--nproc", metavar="N", min=1, help="Processes (GPUs); default train.nproc.")
    ] = None,
    device: Annotated[PlanDevice, typer.Option("--device", help="Estimate for a GPU or a CPU run.")] = PlanDevice.gpu,
) -> None:
    """Count parameters and estimate peak memory per device from config.json alone (no weights downloaded)."""
    from llmtune.plan import parse_memory
    from llmtune.plan_report import make_plan, render
    from llmtune.recipe import load_recipe

    budget = parse_memory(gpu_memory) if gpu_memory else None
    resolved = load_recipe(recipe, set_)
    render(make_plan(resolved, device.value, nproc, budget), resolved)
