"""Option and argument types shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RECIPE_HELP = "Recipe YAML file, or a shipped recipe's name (`llmtune recipe list`)."
RecipeArg = Annotated[Path, typer.Argument(help=RECIPE_HELP, show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set train.lr=1e-4 (repeatable).")]
RecipeOpt = Annotated[Path, typer.Option("--recipe", help=RECIPE_HELP, show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the output dir's last checkpoint.")]
NprocOpt = Annotated[
    Optional[int],
    typer.Option(
        "--nproc", metavar="N", min=1, help="Processes (GPUs) on this machine; above 1 runs accelerate launch."
    ),
]
AccelOpt = Annotated[
    Optional[str],
    typer.Option("--accelerate-config", metavar="FILE", help="accelerate config file, or shipped: accelerate/zero3."),
]
MachinesOpt = Annotated[int, typer.Option("--num-machines", metavar="N", min=1, help="Machines in a multi-node run.")]
RankOpt = Annotated[int, typer.Option("--machine-rank", metavar="R", min=0, help="This machine's rank (0: main).")]
MainIpOpt = Annotated[Optional[str], typer.Option("--main-process-ip", metavar="IP", help="Address of rank 0.")]
MainPortOpt = Annotated[Optional[int], typer.Option("--main-process-port", metavar="PORT", help="Port on rank 0.")]
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
TopKOpt = Annotated[
    Optional[int], typer.Option("--top-k", metavar="K", help="Sample from the K likeliest tokens (default: all).")
]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", metavar="P", help="Sample from the nucleus of mass P.")]
BeamsOpt = Annotated[int, typer.Option("--num-beams", metavar="N", min=1, help="Beam search with N beams.")]
RepOpt = Annotated[float, typer.Option("--repetition-penalty", metavar="R", help="Above 1 discourages repeats.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", metavar="S", help="Seed for sampling (reproducible runs).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Examples per forward pass.")]


def model_args(model: Optional[str], adapter: Optional[Path]) -> tuple[Optional[str], Optional[str]]:
    return model, str(adapter) if adapter is not None else None
