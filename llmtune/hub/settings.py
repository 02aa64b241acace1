"""Where to download from and with which credentials: the endpoint and the token, each with the source it came from."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from llmtune.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROJECT_CONFIG = "llmtune.yaml"


def resolve_endpoint(cli_value: str | None, project_value: str | None) -> tuple[str, str]:
    """The endpoint URL and its source: "--endpoint", else "HF_ENDPOINT", else "project config", else "default"."""
    for value, source in (
        (cli_value, "--endpoint"),
        (os.environ.get("HF_ENDPOINT"), "HF_ENDPOINT"),
        (project_value, "project config"),
    ):
        if value and value.strip():
            url = value.strip().rstrip("/")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UserError(f"The Hub endpoint {value!r} (from {source}) is not an http(s) URL.")
            return url, source
    return DEFAULT_ENDPOINT, "default"


def project_endpoint(config: Path | None = None) -> str | None:
    """`hub.endpoint` from ./llmtune.yaml, the project setting for commands that take no recipe; None if unset."""
    path = config or Path(PROJECT_CONFIG)
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}{f', line {mark.line + 1}' if mark else ''}: not valid YAML.") from None
    hub = data.get("hub") if isinstance(data, dict) else None
    endpoint = hub.get("endpoint") if isinstance(hub, dict) else None
    if hub is not None and not (isinstance(hub, dict) and isinstance(endpoint, (str, type(None)))):
        raise UserError(f"{path}: `hub` must be a mapping with a URL string in `endpoint`, e.g. hub: {{endpoint: URL}}")
    return endpoint


def resolve_token(token_file: Path | None = None) -> tuple[str | None, str]:
    """The token and its source: "--token-file", else "HF_TOKEN", else "login store" (`hf auth login`), else "none".

    There is deliberately no way to give the value on the command line, where shell history and `ps` would keep it.
    """
    if token_file is not None:
        try:
            value = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--token-file {token_file}: cannot read it ({exc.strerror or exc}).") from None
        except UnicodeDecodeError:
            raise UserError(f"--token-file {token_file} is not UTF-8 text; it must hold one token.") from None
        if not value or any(ch.isspace() for ch in value):
            raise UserError(f"--token-file {token_file} must hold exactly one token on one line.")
        return value, "--token-file"
    env = (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if env:
        return env, "HF_TOKEN"
    from huggingface_hub import get_token

    stored = get_token()
    return (stored, "login store") if stored else (None, "none")
