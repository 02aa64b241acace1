"""Progress bars on stderr while a repo downloads: one for the whole repo, one per file in flight.

Shown only on a terminal and when output is not quiet; the summary line reports the same facts afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from llmtune import console


class Transfer:
    """Thread-safe byte counters drawn as rich progress bars."""

    def __init__(self, total_bytes: int) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, Any] = {}
        self._progress: Any = None
        if console.verbosity() >= console.NORMAL and console.console().is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console.console(),
                transient=True,
            )
            self._total = self._progress.add_task("all files", total=total_bytes)

    def __enter__(self) -> Transfer:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def file(self, name: str, size: int) -> Callable[[int], None]:
        """A callback counting bytes of one file (negative when a restart throws bytes away)."""
        if self._progress is None:
            return lambda n: None
        with self._lock:
            task = self._tasks[name] = self._progress.add_task(name, total=size)

        def on_bytes(n: int) -> None:
            self._progress.advance(task, n)
            self._progress.advance(self._total, n)

        return on_bytes

    def done(self, name: str) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.remove_task(self._tasks.pop(name))

    def advance(self, n: int) -> None:
        """Count bytes that needed no transfer (files already present)."""
        if self._progress is not None and n:
            self._progress.advance(self._total, n)
