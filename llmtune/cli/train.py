"""The training commands `llmtune pt | sft | rm | dpo | kto | orpo | cpo | grpo | rloo | cls`: one signature, one
body; more than one process goes through accelerate launch (llmtune.training.launch). And `llmtune report`, a page
comparing runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from llmtune.cli.options import (
    AccelOpt,
    MachinesOpt,
    MainIpOpt,
    MainPortOpt,
    NprocOpt,
    RankOpt,
    RecipeOpt,
    ResumeOpt,
    SetOpt,
)
from llmtune.errors import UserError


def _train_command(command: str, recipe: Path, set_: list[str] | None, resume: bool, launch_opts=None) -> None:
    """The body shared by the training commands: load, check the stage matches, run (or launch N), print."""
    from llmtune import console
    from llmtune.recipe import load_recipe
    from llmtune.training import launch
    from llmtune.training.accelerate import check_launch

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
    from llmtune.training.run import run

    result = run(resolved, resume=resume)
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    evals = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    done = f"done: {result.steps} steps in {result.runtime_s:.1f}s, final loss {loss}{evals}"
    if not launch.is_replica():
        console.stdout().print(f"{done}; saved to {result.output_dir}")


def _launch_options(*values):  # noqa: ANN202 - returns llmtune.training.launch.LaunchOptions, imported lazily
    """The training commands' launch flags as one object (llmtune.training.launch is imported only here)."""
    from llmtune.training.launch import LaunchOptions

    return LaunchOptions(*values)


TRAINING_COMMANDS = {
    "sft": "Supervised fine-tuning on chat or instruction data (full, freeze, lora or qlora).",
    "pt": "Continued pretraining on plain text (every token trained, packed by default).",
    "rm": "Train a reward model (a scalar head on the base) on preference pairs: chosen must outscore rejected.",
    "dpo": "Direct preference optimisation against a frozen reference (the starting model unless dpo.reference).",
    "kto": "KTO on unpaired rows (prompt, completion, label true/false); preference pairs are split into such rows.",
    "orpo": "ORPO on preference pairs: the SFT loss on the chosen answer plus an odds-ratio term; no reference model.",
    "cpo": "CPO on preference pairs, or SimPO (cpo.loss_type: simpo): preference losses with no reference model.",
    "grpo": "Online RL (GRPO): sample completions, score them with rl.rewards, learn from each group's advantages.",
    "rloo": "Online RL (RLOO): like grpo, with each completion's baseline the mean reward of the others.",
    "cls": "Train a text classifier (a label head on the base) on text/label rows; accuracy and macro F1 on eval.",
}


def _training_command(stage: str, summary: str) -> Callable[..., None]:
    """The training commands share one signature; each checks that the recipe's stage matches it."""

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
    return command


def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Training run directories.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The page: .html (self-contained) or .md.")],
) -> None:
    """One page comparing training runs: recipe differences, sizes and timings, final numbers, curves overlaid."""
    from llmtune import console
    from llmtune.report.page import write_report

    console.info(f"wrote {write_report(runs, out)}", markup=False)


COMMANDS = {stage: _training_command(stage, summary) for stage, summary in TRAINING_COMMANDS.items()}
COMMANDS["report"] = report
