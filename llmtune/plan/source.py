"""Where `llmtune plan` reads a model's config.json from, first match wins: `--config FILE`, a local model directory,
the HF cache, the copy shipped in `llmtune/plan/configs/`, and only then the Hub (with a short retry budget: a plan
is an estimate, not worth half a minute of backoff)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import UserError
from llmtune.hub import RetryPolicy
from llmtune.schema import Recipe

SHIPPED = Path(__file__).parent / "configs"
FETCH_RETRY = RetryPolicy(attempts=2, backoff=1.0, max_wait=1.0)


@dataclass(frozen=True)
class ConfigSource:
    """A config.json file and where it came from, in words (printed by `plan`)."""

    path: Path
    origin: str


def shipped_config(repo_id: str) -> Path | None:
    """The copy of `org/name`'s config.json shipped with llmtune, if there is one."""
    path = SHIPPED / f"{repo_id.replace('/', '--')}.json"
    return path if "/" in repo_id and path.is_file() else None


def advice(repo_id: str) -> str:
    return (
        "plan needs only config.json: point the recipe at a local directory holding it "
        "(model.name_or_path: /path/to/dir), pass --config FILE, or fetch it once with "
        f"`llmtune download {repo_id} --include config.json`"
    )


def find_config(recipe: Recipe, config_file: Path | None = None) -> ConfigSource:
    """The config.json `plan` reads for the recipe's model (see the module docstring for the order)."""
    if config_file is not None:
        path = Path(config_file).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"--config: {config_file} does not exist (expected a config.json file)")
        return ConfigSource(path, "--config")
    name = recipe.model.name_or_path
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserError(f"model.name_or_path: {local} is not a model directory (no config.json in it)")
        return ConfigSource(local / "config.json", "local directory")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise UserError(f"model.name_or_path: {name} does not exist (neither a local directory nor a Hub id)")
    if recipe.model.trust_remote_code:
        raise UserError(
            f"model.name_or_path: {name} needs remote code; plan reads remote-code models only from a local "
            f"directory (llmtune download {name} first)"
        )
    return _cached(name, recipe.model.revision) or _shipped(name) or _fetch(name, recipe)


def _cached(repo_id: str, revision: str) -> ConfigSource | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id: the fetch below says so
        return None
    return ConfigSource(Path(path), "HF cache") if isinstance(path, str) else None


def _shipped(repo_id: str) -> ConfigSource | None:
    path = shipped_config(repo_id)
    return ConfigSource(path, "copy shipped with llmtune") if path else None


def _fetch(repo_id: str, recipe: Recipe) -> ConfigSource:
    from huggingface_hub import constants

    from llmtune.hub import HubUnreachable, download_repo, project_endpoint, resolve_endpoint, resolve_token

    endpoint = recipe.hub.endpoint
    url, _ = resolve_endpoint(None, endpoint if endpoint is not None else project_endpoint())
    where = f"config.json of {repo_id}@{recipe.model.revision}"
    if constants.is_offline_mode():
        raise UserError(f"model.name_or_path: {where} is not cached and HF_HUB_OFFLINE is set; {advice(repo_id)}")
    token, _ = resolve_token()
    try:
        summary = download_repo(repo_id, revision=recipe.model.revision, endpoint=url, token=token,
                                include=("config.json",), max_workers=1, retry=FETCH_RETRY)  # fmt: skip
    except HubUnreachable as exc:
        why = str(exc).split(". Check the network")[0]  # the rest is advice for `llmtune download`, not for plan
        raise UserError(f"model.name_or_path: {where} is not cached and {url} cannot be reached ({why}); "
                        f"{advice(repo_id)}") from None  # fmt: skip
    except UserError as exc:
        raise UserError(f"model.name_or_path: cannot fetch {where} from {url}: {exc} {advice(repo_id)}") from None
    return ConfigSource(summary.root / "config.json", f"fetched from {url}")


def parse_memory(text: str) -> int:
    """'24GiB', '24GB', '80G', '16000MiB' or a bare number of GiB -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"--gpu-memory {text!r}: expected a size such as 24GiB, 80GB or 16000MiB")
    value, prefix, binary = float(match[1]), match[2].upper(), match[3].lower().startswith("i")
    power = "KMGT".find(prefix) + 1 if prefix else 3
    return int(value * (1024 if binary or not match[3] else 1000) ** power)
