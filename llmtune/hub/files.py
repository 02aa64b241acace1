"""File-level machinery behind `llmtune.hub.download_repo`: safe paths, resumable transfers, verification, retries.

huggingface_hub 2.4 deletes a partial download when its process stops and checks sizes only; here partial files
survive an interrupted run (the next one asks for the rest with a Range request), every file is checked against
the size and sha256 (LFS) or git blob sha1 the server lists, and transient failures are retried with backoff.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from llmtune import console
from llmtune.errors import UserError

T = TypeVar("T")
HEX_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file as the server lists it: path in the repo, size, git blob id, and sha256 when it is stored in LFS."""

    path: str
    size: int
    blob_id: str
    sha256: str | None = None

    @property
    def etag(self) -> str:
        """The content id the HF cache names blobs by: the LFS sha256, else the git blob sha1."""
        return self.sha256 or self.blob_id


class ContentMismatch(Exception):
    """A downloaded file does not match the size or hash the server declared; it is deleted and fetched again."""


class RetriesExhausted(Exception):
    """A transient failure outlasted the retry budget."""

    def __init__(self, what: str, attempts: int, cause: BaseException) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempts ({describe(cause)})")
        self.cause = cause


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff: waits backoff, 2*backoff, ... capped at max_wait seconds."""

    attempts: int = 6
    backoff: float = 1.0
    max_wait: float = 8.0

    def wait(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, self.max_wait)


def describe(exc: BaseException) -> str:
    """A one-line description of a network error (never contains request headers, so never a token)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"HTTP {status}" if status and not isinstance(exc, ContentMismatch) else text


def is_transient(exc: BaseException) -> bool:
    """Connection resets, timeouts, truncated bodies, 5xx/408/429 answers and corrupt content are worth a retry."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, (httpx2.TransportError, ContentMismatch)):
        return True
    if isinstance(exc, HfHubHTTPError):
        return getattr(exc.response, "status_code", None) in TRANSIENT_STATUS
    return False


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run `action`, retrying transient failures; anything else propagates at once."""
    for attempt in range(policy.attempts):
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                raise RetriesExhausted(what, policy.attempts, exc) from exc
            wait = policy.wait(attempt)
            console.warn(f"{what}: {describe(exc)}; retry {attempt + 1}/{policy.attempts - 1} in {wait:.1f}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def check_repo_path(name: str) -> str:
    """Accept a server-given file name only as a plain relative POSIX path that stays inside its directory."""
    parts = PurePosixPath(name).parts
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or name != "/".join(parts)
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise UserError(f"The server listed an unsafe file name {name!r}; refusing to download anything from it.")
    return name


def safe_join(root: Path, name: str) -> Path:
    """root/name, refusing names (or symlinked folders on the way) that would land outside root.

    The last component may be a symlink (the HF cache links snapshot files to blobs); it is replaced, not followed.
    """
    path = root / check_repo_path(name)
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise UserError(f"Refusing to write {name!r}: it resolves outside {root}.")
    return path


def content_problem(path: Path, remote: RemoteFile, full: bool = True) -> str | None:
    """Why the file at `path` is not `remote` (size, then sha256 or git sha1 when full), or None if it is."""
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    if not full:
        return None
    if remote.sha256:
        digest, expected, kind = hashlib.sha256(), remote.sha256, "sha256"
    else:
        digest, expected, kind = hashlib.sha1(f"blob {size}\0".encode()), remote.blob_id, "git sha1"
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    actual = digest.hexdigest()
    return None if actual == expected.lower() else f"{kind} {actual[:12]}..., expected {expected[:12]}..."


def stream_to_partial(
    url: str, headers: dict[str, str], partial: Path, size: int, on_bytes: Callable[[int], None]
) -> None:
    """Append the rest of `url` to `partial`, asking for it with a Range request when part of it is already there.

    A server that ignores the Range (answers 200) gets the file rewritten from the start.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    if partial.exists() and have == size:
        return
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if have:
        request_headers["Range"] = f"bytes={have}-"
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with get_session().stream("GET", url, headers=request_headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code == 416:
            partial.unlink(missing_ok=True)
            raise ContentMismatch(f"the server refused to resume at byte {have}")
        hf_raise_for_status(response)
        resumed = have and response.status_code == 206 and _range_start(response) == have
        if have and not resumed:
            console.debug(f"{partial.name}: the server did not resume at byte {have}; fetching from the start")
            on_bytes(-have)
        # Unbuffered: every byte received is on disk at once, so a download stopped by Ctrl-C (its daemon threads
        # end without closing the file) resumes from exactly what arrived, not from what a buffer had flushed.
        with partial.open("ab" if resumed else "wb", buffering=0) as out:
            for chunk in response.iter_bytes():
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) :]
                on_bytes(len(chunk))


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def run_parallel(jobs: Sequence[Callable[[], None]], workers: int) -> None:
    """Run jobs on daemon threads and stop at the first error.

    Daemon threads let Ctrl-C end the process at once; partial files stay on disk for the next run to resume.
    """
    pending = list(reversed(jobs))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                job = pending.pop()
            try:
                job()
            except BaseException as exc:
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(workers, len(jobs))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    if errors:
        raise errors[0]
