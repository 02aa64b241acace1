"""The one error type meant for users: the CLI prints its message and exits with code 2, no traceback.

Bugs stay ordinary exceptions, with their tracebacks.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix: a bad recipe, a missing file, a malformed row.

    The message is one paragraph naming the place (file, line, key or row) and what would be valid.
    """


def not_utf8(label: str, data: bytes, fix: str) -> UserError:
    """The UserError for a file that is not UTF-8: the line and column of its first bad byte, and the fix."""
    for line_no, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            return UserError(f"{label}:{line_no}: not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}); {fix}")
    return UserError(f"{label}: not UTF-8 text; {fix}")


EXTRAS = {
    "rouge_score": ("metrics", "rouge-score"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "trackio": ("trackio", "trackio"),
    "swanlab": ("swanlab", "swanlab"),
    "lm_eval": ("harness", "lm-eval"),
    "deepspeed": (None, "deepspeed"),
    "gguf": ("gguf", "gguf"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "openai": ("serve", "openai"),
}
"""Optional packages: import name -> (llmtune extra that installs it, its pip name)."""


def has_module(name: str) -> bool:
    """True when `name` can be imported (checked without importing it; a module blocked in sys.modules is not)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install_hint(name: str) -> str:
    """How to get an optional package: `pip install 'llmtune[extra]'` (or its pip name)."""
    extra, pip_name = EXTRAS.get(name, (None, name))  # type: ignore[assignment]
    return f"pip install 'llmtune[{extra}]'" if extra else f"pip install {pip_name}"


def require_module(name: str, feature: str) -> None:
    """A UserError naming what to install when `feature` needs a package that is not installed."""
    if not has_module(name):
        raise UserError(f"{feature} needs the {EXTRAS.get(name, (None, name))[1]} package: {install_hint(name)}")
