"""Recipe names to local directories: a path stays a path, a Hub id becomes a verified snapshot in the HF cache."""

from __future__ import annotations

from pathlib import Path

from llmtune import console
from llmtune.errors import UserError
from llmtune.hub.download import download_repo
from llmtune.hub.errors import HubUnreachable
from llmtune.hub.settings import project_endpoint, resolve_endpoint, resolve_token

PATH_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow", ".yaml", ".yml")


def looks_like_path(name: str) -> bool:
    """True for what can only be a local path (absolute, relative, home, Windows, deeper than org/name, a data
    file's suffix); False for what may be a Hub id (`org/name` or `name`)."""
    return (
        name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.lower().endswith(PATH_SUFFIXES)
    )


def resolve_dir(name: str, revision: str = "main", endpoint: str | None = None, what: str = "--model") -> Path:
    """THE way a model given as "a path or a Hub id" becomes a local directory: an existing directory as is, a
    Hub id fetched (verified, cached) through `ensure_local`; a file or a missing path is a UserError naming `what`."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{what}: {name} is a file; expected a model directory (with config.json) or a run directory")
    if looks_like_path(name):
        raise UserError(f"{what}: {name} does not exist (neither a local directory nor a Hub id)")
    return Path(ensure_local(name, revision, "model", endpoint))


def ensure_local(
    name_or_path: str,
    revision: str = "main",
    repo_type: str = "model",
    endpoint: str | None = None,
    *,
    cache_dir: Path | None = None,
) -> Path:
    """A local directory for a model or dataset: an existing path unchanged, else the Hub repo's snapshot dir.

    `endpoint` is the project setting (a recipe's `hub.endpoint`; None reads ./llmtune.yaml), and HF_ENDPOINT wins
    over it. A Hub id is fetched into the HF cache (or `cache_dir`) the way `llmtune download` does: resumable,
    retried, fetched files hashed; files already cached are size-checked rather than re-hashed, so a training start
    stays fast. Offline (HF_HUB_OFFLINE=1), or when the endpoint cannot be reached, a complete cached snapshot is
    used. Anything else raises UserError saying what is wrong.
    """
    local = Path(name_or_path).expanduser()
    if local.exists():
        return local
    if looks_like_path(name_or_path):
        raise UserError(f"{name_or_path}: no such file or directory.")
    url, source = resolve_endpoint(None, endpoint if endpoint is not None else project_endpoint())
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return _cached_snapshot(name_or_path, revision, repo_type, cache_dir, "HF_HUB_OFFLINE is set")
    console.info(f"Fetching {repo_type} {name_or_path}@{revision} from {url} (endpoint from {source})")
    token, _ = resolve_token()
    try:
        summary = download_repo(name_or_path, repo_type=repo_type, revision=revision, endpoint=url, token=token,
                                cache_dir=cache_dir, verify_existing=False)  # fmt: skip
    except HubUnreachable as exc:
        return _cached_snapshot(name_or_path, revision, repo_type, cache_dir, str(exc))
    except UserError as exc:
        raise UserError(f"{name_or_path!r} is not a local path; as a Hub id: {exc}") from None
    if summary.fetched:
        console.info(f"Fetched {summary.fetched} files ({summary.bytes_fetched:,} bytes) into {summary.root}")
    return summary.root


def _cached_snapshot(repo_id: str, revision: str, repo_type: str, cache_dir: Path | None, why: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                                 local_files_only=True)  # fmt: skip
    except Exception:
        raise UserError(f"{repo_id}@{revision} is not in the local cache and cannot be fetched: {why}") from None
    console.warn(f"{why.rstrip('.')}; using the cached copy of {repo_id}@{revision}")
    return Path(path)
