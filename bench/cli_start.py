"""Cold start of `llmtune --help` beside `python -c pass`: medians over repeated runs, measured side by side."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 15


def median_seconds(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    baseline = median_seconds([sys.executable, "-c", "pass"])
    help_time = median_seconds([sys.executable, "-m", "llmtune", "--help"])
    print(f"cold start, median of {RUNS}:")
    print(f"  python -c pass      {baseline:.3f} s")
    print(f"  llmtune --help      {help_time:.3f} s   (goal < 0.300 s; {help_time / baseline:.1f}x python)")
    print(f"  llmtune's own cost  {help_time - baseline:.3f} s")


if __name__ == "__main__":
    main()
