"""Metric modules for `evaluate`, shipped with llmtune and loaded by path so nothing is fetched at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent
SHIPPED = ("exact_match", "rouge")


def metric_path(name: str) -> Path:
    """The script of a shipped metric module (llmtune/metrics/<name>/<name>.py)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown metric {name!r}; shipped: {', '.join(SHIPPED)}")
    return METRICS_DIR / name / f"{name}.py"


def load_metric(name: str) -> Any:
    """`evaluate.load` on the shipped script: works with HF_HUB_OFFLINE=1, no network needed."""
    import evaluate

    return evaluate.load(str(metric_path(name)))
