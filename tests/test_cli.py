"""The CLI starts instantly: `--help` imports no heavy library, and every listed command answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "torch", "transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes", "huggingface_hub",
    "matplotlib", "lm_eval", "mlflow",
)  # fmt: skip

PROBE = """
import sys
from llmtune.cli import app
try:
    app(sys.argv[1:], prog_name="llmtune")
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def command_names() -> list[str]:
    import typer.main

    from llmtune.cli import app

    group = typer.main.get_command(app)
    return sorted(group.commands)


def imported_heavy(*args: str) -> list[str]:
    code = PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_top_level_help_imports_no_heavy_library() -> None:
    assert imported_heavy("--help") == []


@pytest.mark.parametrize("name", command_names())
def test_each_command_help_is_light(name: str) -> None:
    assert imported_heavy(name, "--help") == []


def test_version_and_module_entry_point() -> None:
    from llmtune import __version__

    result = subprocess.run([sys.executable, "-m", "llmtune", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"llmtune {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "llmtune", "fly"], capture_output=True, text=True)
    assert result.returncode == 2 and "No such command" in result.stderr
