"""Catching a child process in a state that lasts milliseconds.

Polling a running process misses a short state (a checkpoint being written) whenever the poller is descheduled on a
loaded machine, and the child then runs past it or to its end. Here the child runs in short slices and is frozen
(SIGSTOP) between them, so the state is checked while it cannot move: a frozen child is caught in it or has not
reached it yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped or gone (SIGSTOP reaches each thread asynchronously)."""
    try:
        stats = [(task / "stat").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return all(stat.rsplit(")", 1)[1].split()[0] in "TtZX" for stat in stats)


def step_until(proc: subprocess.Popen, ready: Callable[[], bool], slice_s: float = 0.0005) -> bool:
    """Run the child in slices of about `slice_s` until ready() holds while it is frozen (True: it is left frozen,
    for a kill) or it exits first (False)."""
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        while not stopped(proc.pid):
            time.sleep(0.0001)
        if proc.poll() is not None:
            return False
        if ready():
            return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(slice_s)


def run_slices(proc: subprocess.Popen, count: int) -> bool:
    """Let the child run `count` slices more, then leave it frozen; False if it exits first."""
    left = iter(range(count))
    return step_until(proc, lambda: next(left, None) is None)
