"""Download a repo: list it at one commit, filter, fetch what is missing with resume and retries, verify, summarise.

huggingface_hub lists the files (with sizes and LFS sha256), builds URLs and headers, and raises typed errors;
`llmtune.hub.files` adds what it lacks: partial files that survive an interrupted run, hash checks, bounded retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmtune import console
from llmtune.errors import UserError
from llmtune.hub.errors import Where, hub_error, probe_missing_revision
from llmtune.hub.files import (
    HEX_ID,
    ContentMismatch,
    RemoteFile,
    RetryPolicy,
    check_repo_path,
    content_problem,
    run_parallel,
    stream_to_partial,
    with_retries,
)
from llmtune.hub.progress import Transfer
from llmtune.hub.settings import DEFAULT_ENDPOINT
from llmtune.hub.targets import CacheTarget, LocalDirTarget

REPO_TYPES = ("model", "dataset")


@dataclass(frozen=True)
class RepoPlan:
    """What a download covers: the repo at one commit and the files kept after --include/--exclude."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    endpoint: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class DownloadSummary:
    """What `download_repo` did; `root` is the snapshot dir (cache) or the local dir holding the files."""

    plan: RepoPlan
    root: Path
    fetched: int = 0
    skipped: int = 0
    repaired: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    fully_verified: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def plan_download(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str = "main",
    endpoint: str = DEFAULT_ENDPOINT,
    token: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    retry: RetryPolicy = RetryPolicy(),
) -> RepoPlan:
    """List the repo at `revision` (pinned to its commit) and keep the files matching include and not exclude."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects, validate_repo_id

    if repo_type not in REPO_TYPES:
        raise UserError(f"--repo-type must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}.")
    try:
        validate_repo_id(repo_id)
        check_repo_path(revision)
    except (HFValidationError, UserError):
        raise UserError(f"{repo_id!r} at revision {revision!r} is not a valid Hub repo id and revision.") from None
    api = HfApi(endpoint=endpoint, token=token or False)
    where = Where(repo_id=repo_id, repo_type=repo_type, revision=revision, endpoint=endpoint, token=token)
    try:
        info = with_retries(lambda: api.repo_info(repo_id, repo_type=repo_type, revision=revision), "repo info", retry)
        commit = str(getattr(info, "sha", "") or "").lower()
        if not HEX_ID.match(commit):
            raise UserError(f"{endpoint} did not name the commit of {repo_id}@{revision}; is it a Hub API endpoint?")
        entries = with_retries(
            lambda: list(api.list_repo_tree(repo_id, repo_type=repo_type, revision=commit, recursive=True)),
            "file listing",
            retry,
        )
    except RepositoryNotFoundError as exc:
        raise probe_missing_revision(api, where) or hub_error(exc, where) from None
    except Exception as exc:
        raise hub_error(exc, where) from None
    files = [
        RemoteFile(check_repo_path(e.path), int(e.size), str(e.blob_id), e.lfs.sha256 if e.lfs else None)
        for e in entries
        if isinstance(e, RepoFile)
    ]
    kept = filter_repo_objects(files, allow_patterns=list(include) or None, ignore_patterns=list(exclude) or None,
                               key=lambda f: f.path)  # fmt: skip
    return RepoPlan(repo_id, repo_type, revision, commit, endpoint, tuple(sorted(kept, key=lambda f: f.path)))


def download_repo(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str = "main",
    endpoint: str = DEFAULT_ENDPOINT,
    token: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
    max_workers: int = 8,
    verify_existing: bool = True,
    retry: RetryPolicy = RetryPolicy(),
) -> DownloadSummary:
    """Fetch a repo's files into `local_dir` or the HF cache; skip verified ones; return what happened.

    Files already present are hashed when `verify_existing` (else size-checked); fetched files are always hashed.
    A mismatch deletes the file and fetches it again; transient failures are retried per `retry`.
    """
    from huggingface_hub import constants

    started = time.monotonic()
    plan = plan_download(repo_id, repo_type=repo_type, revision=revision, endpoint=endpoint, token=token,
                         include=include, exclude=exclude, retry=retry)  # fmt: skip
    if not plan.files:
        raise UserError(f"No file of {repo_id}@{revision} matches the --include/--exclude patterns.")
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    target = LocalDirTarget(local_dir) if local_dir else CacheTarget(cache, repo_id, repo_type, plan.commit)
    summary = DownloadSummary(plan=plan, root=target.root, fully_verified=verify_existing)
    groups: dict[str, list[RemoteFile]] = {}
    for remote in plan.files:
        groups.setdefault(remote.etag, []).append(remote)
    with Transfer(plan.total_bytes) as bars:
        sync = _GroupSync(plan, target, summary, bars, token, verify_existing, retry)
        jobs = [lambda files=files: sync.run(files) for files in groups.values()]
        try:
            run_parallel(jobs, max_workers)
        except Exception as exc:
            where = Where(repo_id=repo_id, repo_type=repo_type, revision=revision, endpoint=endpoint, token=token)
            raise hub_error(exc, where) from None
    target.finish(revision)
    for remote in plan.files:
        problem = content_problem(target.path_of(remote), remote, full=False)
        if problem:
            raise AssertionError(f"{remote.path} is wrong after the download: {problem}")
    summary.seconds = time.monotonic() - started
    return summary


@dataclass
class _GroupSync:
    """Brings one content group (files sharing an etag) in place: keep, reuse, or fetch with retries."""

    plan: RepoPlan
    target: CacheTarget | LocalDirTarget
    summary: DownloadSummary
    bars: Transfer
    token: str | None
    verify_existing: bool
    retry: RetryPolicy

    def run(self, files: list[RemoteFile]) -> None:
        missing = [f for f in files if not self._present(f)]
        present = len(files) - len(missing)
        if missing:
            source = next((self.target.path_of(f) for f in files if f not in missing), None) or self._blob(files[0])
            if source is None:
                self._fetch(files[0])
                source = self.target.partial(files[0].etag)
                self.summary.add(fetched=len(missing), bytes_fetched=files[0].size)
            else:
                present += len(missing)
            self.target.place(missing, source)
        self.summary.add(skipped=present)
        self.bars.advance(files[0].size * present)

    def _present(self, remote: RemoteFile) -> bool:
        path = self.target.path_of(remote)
        if not path.exists():
            return False
        problem = content_problem(path, remote, full=self.verify_existing)
        if problem is None:
            return True
        console.warn(f"{remote.path}: the local copy does not match the server ({problem}); fetching it again")
        self.target.discard(path)
        self.summary.add(repaired=1)
        return False

    def _blob(self, remote: RemoteFile) -> Path | None:
        blob = self.target.reusable(remote.etag)
        if blob is not None and content_problem(blob, remote, full=self.verify_existing) is not None:
            self.target.discard(blob)
            return None
        return blob

    def _fetch(self, remote: RemoteFile) -> None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        plan = self.plan
        url = hf_hub_url(plan.repo_id, remote.path, repo_type=plan.repo_type, revision=plan.commit,
                         endpoint=plan.endpoint)  # fmt: skip
        headers = build_hf_headers(token=self.token or False, library_name="llmtune")
        partial = self.target.partial(remote.etag)
        partial.parent.mkdir(parents=True, exist_ok=True)
        on_bytes = self.bars.file(remote.path, remote.size)

        def attempt() -> None:
            stream_to_partial(url, headers, partial, remote.size, on_bytes)
            have = partial.stat().st_size
            if have < remote.size:
                raise ContentMismatch(f"the transfer stopped at byte {have} of {remote.size}")
            problem = content_problem(partial, remote)
            if problem:
                partial.unlink(missing_ok=True)
                on_bytes(-have)
                self.summary.add(repaired=1)
                raise ContentMismatch(f"downloaded data has {problem}; deleted it")

        with_retries(attempt, remote.path, self.retry)
        self.bars.done(remote.path)
