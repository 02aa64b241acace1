"""The command line (see llmtune.cli.app)."""

from llmtune.cli.app import app, main

__all__ = ["app", "main"]
