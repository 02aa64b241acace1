"""Models and datasets from the Hugging Face Hub or any mirror: endpoint and token resolution, verified downloads.

`download_repo` lists a repo, filters it, fetches what is missing (resumable, retried, every file checked against
the size and hash the server declares) and reports what it did. `ensure_local` turns a recipe's model or dataset
name into a local directory through the same path, so training works against a mirror with no extra step.
The endpoint is always passed to huggingface_hub explicitly; its import-time globals are never changed.
"""

from llmtune.hub.download import DownloadSummary, RepoPlan, download_repo, plan_download
from llmtune.hub.errors import HubUnreachable
from llmtune.hub.files import RemoteFile, RetryPolicy
from llmtune.hub.local import ensure_local, looks_like_path, resolve_dir
from llmtune.hub.settings import DEFAULT_ENDPOINT, project_endpoint, resolve_endpoint, resolve_token

__all__ = [
    "DEFAULT_ENDPOINT",
    "DownloadSummary",
    "HubUnreachable",
    "RemoteFile",
    "RepoPlan",
    "RetryPolicy",
    "download_repo",
    "ensure_local",
    "looks_like_path",
    "plan_download",
    "project_endpoint",
    "resolve_endpoint",
    "resolve_dir",
    "resolve_token",
]
