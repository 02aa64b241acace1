"""Curves from metrics.jsonl: one panel per quantity (loss, learning rate, accuracy, reward margin, rewards, grad
norm), only those a run logged; `overlay` draws one metric of several runs on one figure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "eval_loss"),
    "learning rate": ("learning_rate",),
    "accuracy": ("accuracy", "eval_accuracy", "rewards/accuracies", "eval_rewards/accuracies",
                 "mean_token_accuracy", "eval_mean_token_accuracy"),
    "reward margin": ("margin", "eval_margin", "rewards/margins", "eval_rewards/margins"),
    "rewards": ("mean_reward", "eval_mean_reward", "rewards/chosen", "rewards/rejected", "eval_rewards/chosen",
                "eval_rewards/rejected"),
    "grad norm": ("grad_norm",),
}  # fmt: skip
"""Panel title -> the metrics.jsonl keys drawn in it, train and eval, as transformers and TRL 1.16 name them
(RewardTrainer: accuracy, margin, mean_reward; DPOTrainer: rewards/accuracies, rewards/margins, rewards/chosen)."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key, in step order, numbers only."""
    points = [(row.get("step", i), row[key]) for i, row in enumerate(rows) if _number(row.get(key))]
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [float(p[1]) for p in points]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels_for(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Panel title -> the keys of it the run logged, for the panels with something to draw."""
    found = {name: [k for k in keys if series(rows, k)[0]] for name, keys in PANELS.items()}
    return {name: keys for name, keys in found.items() if keys}


def draw_curves(rows: Sequence[dict[str, Any]], out: Path, title: str) -> Path | None:
    """One PNG with a panel per quantity the run logged; None when it logged nothing drawable."""
    panels = panels_for(rows)
    if not panels:
        return None
    plt = pyplot()
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels.items(), strict=False):
        for key in keys:
            steps, values = series(rows, key)
            ax.plot(steps, values, marker="o" if len(steps) < 3 else None, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def overlay(runs: dict[str, Sequence[dict[str, Any]]], key: str, out: Path) -> Path | None:
    """One figure of `key` with a line per run (label -> its metrics rows); None when no run logged it."""
    drawn = {label: series(rows, key) for label, rows in runs.items()}
    drawn = {label: points for label, points in drawn.items() if points[0]}
    if not drawn:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (steps, values) in drawn.items():
        ax.plot(steps, values, marker="o" if len(steps) < 3 else None, markersize=3, label=label)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_run_curves(run_dir: Path) -> Path | None:
    """DIR/curves.png from DIR/metrics.jsonl (None when there is nothing to draw)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.exists():
        return None
    return draw_curves(read_metrics(metrics), Path(run_dir) / "curves.png", Path(run_dir).name)
