"""The `llmtune download` job: say which endpoint and token source are used, then list (--dry-run) or download."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from llmtune import console
from llmtune.hub import DownloadSummary, RepoPlan, download_repo, plan_download
from llmtune.hub.settings import project_endpoint, resolve_endpoint, resolve_token

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class DownloadOptions:
    """The command line of `llmtune download`, as given."""

    repo_id: str
    repo_type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    local_dir: Path | None = None
    endpoint: str | None = None
    token_file: Path | None = None
    max_workers: int = 8
    dry_run: bool = False


def run(opts: DownloadOptions) -> None:
    """Resolve endpoint and token, then print the plan (dry run) or download and print the summary."""
    endpoint, source = resolve_endpoint(opts.endpoint, project_endpoint())
    token, token_source = resolve_token(opts.token_file)
    console.info(f"Endpoint: {endpoint} (from {source}); token: {_token_note(token_source)}")
    common = dict(repo_type=opts.repo_type, revision=opts.revision, endpoint=endpoint, token=token,
                  include=opts.include, exclude=opts.exclude)  # fmt: skip
    if opts.dry_run:
        _print_plan(plan_download(opts.repo_id, **common))
        return
    try:
        summary = download_repo(opts.repo_id, local_dir=opts.local_dir, max_workers=opts.max_workers, **common)
    except KeyboardInterrupt:
        console.warn("Interrupted. Finished files are kept; run the same command again to resume the others.")
        sys.exit(EXIT_INTERRUPTED)
    _print_summary(summary)


def _token_note(source: str) -> str:
    return "none (public repos only)" if source == "none" else f"from {source}"


def _print_plan(plan: RepoPlan) -> None:
    out = console.stdout()
    head = f"{plan.repo_type} {plan.repo_id}@{plan.revision} (commit {plan.commit}) on {plan.endpoint}:"
    out.print(head, markup=False)
    for remote in plan.files:
        out.print(f"{remote.size:>14,}  {remote.path}", markup=False)
    out.print(f"{plan.total_bytes:>14,}  total: {len(plan.files)} files ({_human(plan.total_bytes)})", markup=False)


def _print_summary(s: DownloadSummary) -> None:
    plan = s.plan
    check = "size and sha256 / git sha1" if s.fully_verified else "size; fetched files also by hash"
    lines = [
        f"{plan.repo_type} {plan.repo_id}@{plan.revision} (commit {plan.commit[:12]}) from {plan.endpoint}",
        f"fetched {_files(s.fetched)} ({_human(s.bytes_fetched)}) in {s.seconds:.1f}s;"
        f" {s.skipped} already present (skipped); {s.repaired} did not match the server and were fetched again",
        f"verified all {_files(len(plan.files))} ({_human(plan.total_bytes)}; {check})",
    ]
    for line in lines:
        console.info(line)
    console.stdout().print(str(s.root), markup=False)


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
