"""Failed Hub calls turned into one clear message: what is missing or refused, on which endpoint, and what to do."""

from __future__ import annotations

from typing import Any, TypedDict

from llmtune.errors import UserError
from llmtune.hub.files import RetriesExhausted, describe

TOKEN_HELP = (
    "Provide a token: set HF_TOKEN, log in once with `hf auth login`, or pass --token-file FILE to llmtune download."
)


class Where(TypedDict):
    repo_id: str
    repo_type: str
    revision: str
    endpoint: str
    token: str | None


class HubUnreachable(UserError):
    """The endpoint could not be reached, or kept failing; callers may fall back to a cached copy."""


def hub_error(exc: BaseException, where: Where) -> BaseException:
    """The UserError that explains a failed Hub call; an exception that is a bug comes back unchanged."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, UserError):
        return exc
    repo, endpoint = f"{where['repo_type']} {where['repo_id']!r}", where["endpoint"]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, RetriesExhausted):
        return HubUnreachable(
            f"{exc}. Check the network and {endpoint}, then run the same command again:"
            " finished files are kept and partial ones resume."
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubUnreachable(f"HF_HUB_OFFLINE is set, so nothing is fetched from {endpoint}; unset it to download.")
    if isinstance(exc, httpx2.TransportError):
        return HubUnreachable(f"Cannot reach {endpoint}: {describe(exc)}.")
    if isinstance(exc, RevisionNotFoundError):
        return revision_missing(where)
    if isinstance(exc, GatedRepoError):
        return UserError(f"{repo} on {endpoint} is gated: accept its conditions on its page first. {TOKEN_HELP}")
    if status == 404:
        return UserError(
            f"{repo} at revision {where['revision']!r} does not exist on {endpoint}."
            " Check the repo id, --repo-type and --revision."
        )
    if status in (401, 403) or isinstance(exc, RepositoryNotFoundError):
        if where["token"]:
            return UserError(
                f"{endpoint} refused {repo} with the token provided (HTTP {status}): the repo does not exist"
                " there, or the token has no access to it."
            )
        return UserError(
            f"{endpoint} refused {repo} (HTTP {status}): it does not exist there, or it is private or gated"
            f" and needs a token. {TOKEN_HELP}"
        )
    if isinstance(exc, HfHubHTTPError):
        return UserError(f"{endpoint} answered HTTP {status} for {repo}.")
    return exc


def revision_missing(where: Where) -> UserError:
    return UserError(
        f"Revision {where['revision']!r} does not exist in {where['repo_type']} {where['repo_id']!r}"
        f" on {where['endpoint']}."
    )


def probe_missing_revision(api: Any, where: Where) -> UserError | None:
    """Some servers (olah among them) answer a missing revision like a missing repo; tell the two apart."""
    if where["revision"] == "main":
        return None
    try:
        api.repo_info(where["repo_id"], repo_type=where["repo_type"], revision="main")
    except Exception:
        return None
    return revision_missing(where)
