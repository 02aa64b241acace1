"""Prompt files, read one way for every command that takes `--prompts` (generate, bon).

A `.txt` file holds one prompt per non-empty line. Any other data file (.jsonl, .json, .csv, .parquet) holds rows
with `prompt` (text, or messages ending with a user turn), `messages` (a trailing assistant turn is dropped, so SFT
and eval files serve as prompt files) or `text`. A bad row stops with its file and row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.data.formats import MESSAGE_ROLES, Messages, RowError, check_turns, message_list
from llmtune.errors import UserError, not_utf8

Prompt = str | Messages
"""Plain text (rendered with the chat template unless --raw) or a conversation ending with a user turn."""


def prompt_of(row: Any) -> Prompt:
    """The prompt in one row: `prompt`, `messages` or `text`, checked."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object, not {type(row).__name__}")
    key = next((k for k in ("prompt", "messages", "text") if row.get(k) is not None), None)
    if key is None:
        raise RowError(f"no prompt column (expected prompt, messages or text; columns: {', '.join(sorted(row))})")
    value = row[key]
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{key} is empty")
        return value
    messages = message_list(value, key, "role", "content", MESSAGE_ROLES)
    if key == "messages" and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return check_turns(messages, end="user")


def as_messages(prompt: Prompt) -> Messages:
    """A prompt as a conversation: text becomes one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_messages(row: Any) -> Messages:
    """The prompt in one row, as a conversation ending with a user turn."""
    return as_messages(prompt_of(row))


def read_prompts(path: Path, what: str = "--prompts") -> list[Prompt]:
    """Every prompt of a prompt file (see the module docstring); none at all is an error."""
    if not path.is_file():
        raise UserError(f"{what}: {path} is not a file")
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise not_utf8(f"{what} {path}", path.read_bytes(), "re-save the file as UTF-8") from None
        prompts: list[Prompt] = [line.strip() for line in lines if line.strip()]
    else:
        from llmtune.data.readers import read_raw

        prompts = []
        for where, raw in read_raw(path, str(path), "train", None):
            try:
                if isinstance(raw, RowError):
                    raise raw
                prompts.append(prompt_of(raw))
            except RowError as exc:
                raise UserError(f"{where}: {exc}") from None
    if not prompts:
        raise UserError(f"{what}: {path} has no prompts")
    return prompts


FALLBACK_PROMPTS: list[Prompt] = ["Hello!", "What is 2 + 3?", "Name a colour.", "Say something short."]


def sample_prompts(recipe: Any, n: int = 4) -> list[Prompt]:
    """The first `n` prompts of a run's first local training file (prompt, messages or text rows), else a few
    generic ones: cheap material for checking that generation stops."""
    sources = recipe.data.train if recipe is not None else []
    path = Path(sources[0].path).expanduser() if sources else None
    if path is not None and path.is_file():
        try:
            return read_prompts(path, "data.train")[:n]
        except UserError:
            pass
    return FALLBACK_PROMPTS[:n]
