"""Run `llmtune ARGS` in-process through the real entry point (`llmtune.cli.main`), for tests that need speed."""

from __future__ import annotations

import io
import sys

import pytest


def run_main(capsys: pytest.CaptureFixture, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Returns (exit code, stdout, stderr); UserError -> 2 is mapped by `main`, as in the installed command."""
    from llmtune.cli import main

    argv, stdin_was, sys.argv, sys.stdin = sys.argv, sys.stdin, ["llmtune", *args], io.StringIO(stdin)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv, sys.stdin = argv, stdin_was
    out, err = capsys.readouterr()
    return code, out, err
