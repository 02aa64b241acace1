"""Console output for the CLI: rich on stderr, with a verbosity set once by the top-level options.

rich is imported on first use, so `llmtune --help` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL


def set_verbosity(level: int) -> None:
    """QUIET prints errors and warnings only; VERBOSE adds debug lines and library logs.

    Progress bars are for a person watching a terminal: with -q, or when stderr is a file or a pipe, the
    libraries' bars (weight loading, downloads, datasets) are switched off before those libraries are imported."""
    global _level
    _level = level
    logging.basicConfig(level=logging.DEBUG if level >= VERBOSE else logging.WARNING, format="%(name)s: %(message)s")
    # huggingface_hub puts a stderr handler of its own on its logger when imported (transformers does too, but stops
    # propagation); without this each of its warnings (a retry, say) would print twice, once through each handler.
    logging.getLogger("huggingface_hub").propagate = False
    if not live_progress():
        for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(name, "1")


def live_progress() -> bool:
    """Whether to draw progress bars: not with -q, and only on a terminal (never into a log file)."""
    return _level != QUIET and sys.stderr.isatty()


def verbosity() -> int:
    return _level


@functools.cache
def console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def stdout() -> Any:
    """For results a user may pipe (tables, YAML, generated text)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def info(message: str, markup: bool = True) -> None:
    """Progress and results for people; pass markup=False when the text holds user data (paths, rows)."""
    if _level >= NORMAL:
        console().print(message, markup=markup)


def debug(message: str) -> None:
    if _level >= VERBOSE:
        console().print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    from rich.markup import escape

    console().print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    from rich.markup import escape

    console().print(f"[bold red]error:[/bold red] {escape(message)}")


def quiet_libraries() -> None:
    """Silence library messages users cannot act on (unless --verbose): bitsandbytes' notice about an optional
    CPU kernel package, a deprecated transformers attribute that peft still reads, and TRL's notice that
    trl.experimental (orpo, cpo) may change in any release (llmtune pins and tests the version it uses)."""
    if _level >= VERBOSE:
        return
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
