"""Model commands: `llmtune download`, `export`, `plan`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmtune.cli.options import (
    AdapterOpt,
    EndpointOpt,
    ModelOpt,
    RecipeOpt,
    SetOpt,
    model_args,
)


class RepoType(str, Enum):
    model = "model"
    dataset = "dataset"


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
    from llmtune.jobs.download import DownloadOptions, run

    run(DownloadOptions(repo_id, repo_type.value, revision, tuple(include or ()), tuple(exclude or ()), local_dir,
                        endpoint, token_file, max_workers, dry_run))  # fmt: skip


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
    fmt: Annotated[
        str, typer.Option("--format", metavar="safetensors|gguf", help="A transformers directory, or one GGUF file.")
    ] = "safetensors",
    quant: Annotated[
        str, typer.Option("--quant", metavar="f16|bf16|f32|q8_0|q5_1|q5_0|q4_1|q4_0", help="GGUF weight type.")
    ] = "f16",
) -> None:
    """Merge a LoRA/DoRA adapter into its base (a QLoRA base dequantized) and save a standalone model with a card,
    as safetensors or as a GGUF file for llama.cpp / Ollama."""
    from llmtune.jobs.export import export

    export(*model_args(model, adapter), out, max_shard_size=max_shard_size, overwrite=overwrite, dtype=dtype,
           endpoint=endpoint, eval_json=eval_json, push=push, private=private, fmt=fmt, quant=quant)  # fmt: skip


class PlanDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


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
    config: Annotated[
        Optional[Path],
        typer.Option("--config", metavar="FILE", help="Read the model's shapes from this config.json instead."),
    ] = None,
) -> None:
    """Count parameters and estimate peak memory per device from config.json alone (no weights downloaded).

    config.json comes from --config, a local model directory, the HF cache, the copy llmtune ships for the models of
    its recipes, or the Hub, in that order."""
    from llmtune import console
    from llmtune.plan.report import make_plan, render
    from llmtune.plan.source import parse_memory
    from llmtune.recipe import load_recipe

    console.quiet_libraries()
    budget = parse_memory(gpu_memory) if gpu_memory else None
    resolved = load_recipe(recipe, set_)
    render(make_plan(resolved, device.value, nproc, budget, config), resolved)


COMMANDS = {
    "download": download,
    "export": export_cmd,
    "plan": plan_cmd,
}
