"""`llmtune report RUN [RUN ...] --out FILE.html|.md`: one page comparing training runs — where their recipes
differ (recipe.yaml), parameter counts and timings (summary.json), final and eval numbers and the curves of each
metric overlaid (metrics.jsonl). HTML embeds the PNGs as data URIs; Markdown writes them beside the page."""

from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import UserError
from llmtune.report.curves import PANELS, overlay, read_metrics

SUMMARY_KEYS = ("stage", "method", "steps", "final_loss", "mean_loss", "eval_loss", "trainable_params",
                "total_params", "runtime_s", "first_step_s", "step_s", "world_size")  # fmt: skip
IGNORED_RECIPE_KEYS = ("output.dir",)


@dataclass
class Run:
    label: str
    recipe: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def load_run(path: Path) -> Run:
    """A run directory's recipe.yaml, summary.json and metrics.jsonl (each may be missing, not all three)."""
    import yaml

    path = Path(path)
    files = [path / name for name in ("recipe.yaml", "summary.json", "metrics.jsonl")]
    if not path.is_dir() or not any(f.exists() for f in files):
        raise UserError(f"{path}: not a training run directory (no recipe.yaml, summary.json or metrics.jsonl)")
    recipe = yaml.safe_load(files[0].read_text(encoding="utf-8")) if files[0].exists() else {}
    summary = json.loads(files[1].read_text(encoding="utf-8")) if files[1].exists() else {}
    rows = read_metrics(files[2]) if files[2].exists() else []
    return Run(path.name, recipe if isinstance(recipe, dict) else {}, summary, rows)


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs, labelled by directory name (parent/name where two names clash)."""
    runs = [load_run(p) for p in paths]
    names = [r.label for r in runs]
    for run, path in zip(runs, paths, strict=True):
        if names.count(run.label) > 1:
            run.label = f"{Path(path).resolve().parent.name}/{run.label}"
    return runs


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) and value else f"{prefix}{key}"))
    return {k.rstrip("."): v for k, v in out.items()}


def recipe_differences(runs: list[Run]) -> list[tuple[str, list[Any]]]:
    """(key, each run's value) for every recipe key whose values differ between the runs."""
    flat = [flatten(run.recipe) for run in runs]
    keys = sorted({k for f in flat for k in f} - set(IGNORED_RECIPE_KEYS))
    rows = [(k, [f.get(k, "—") for f in flat]) for k in keys]
    return [(k, values) for k, values in rows if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1]


def final_numbers(run: Run) -> dict[str, float]:
    """The last logged value of every eval metric (and of the train loss)."""
    last: dict[str, float] = {}
    for row in run.rows:
        for key, value in row.items():
            if (key == "loss" or key.startswith("eval_")) and isinstance(value, int | float):
                last[key] = value
    return last


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else str(value) if not isinstance(value, dict | list) else json.dumps(value)


def _tables(runs: list[Run]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the page's tables."""
    header = ["", *(r.label for r in runs)]
    summary = [[k, *(_cell(r.summary.get(k)) for r in runs)] for k in SUMMARY_KEYS if any(k in r.summary for r in runs)]
    finals = [final_numbers(r) for r in runs]
    numbers = [[k, *(_cell(f.get(k)) for f in finals)] for k in sorted({k for f in finals for k in f})]
    diffs = [[k, *map(_cell, values)] for k, values in recipe_differences(runs)]
    if len(runs) == 1:
        diffs = [[k, _cell(v)] for k, v in sorted(flatten(runs[0].recipe).items()) if k not in IGNORED_RECIPE_KEYS]
    title = "Recipe differences" if len(runs) > 1 else "Recipe"
    return [(title, header, diffs), ("Runs", header, summary), ("Final numbers", header, numbers)]


def _figures(runs: list[Run], folder: Path) -> list[tuple[str, Path]]:
    keys = [k for keys in PANELS.values() for k in keys]
    data = {r.label: r.rows for r in runs}
    made = [(key, overlay(data, key, folder / f"{re.sub(r'[^A-Za-z0-9]+', '-', key)}.png")) for key in keys]
    return [(key, path) for key, path in made if path is not None]


def write_report(paths: list[Path], out: Path) -> Path:
    """Write the page; its format follows the suffix of `out` (.html or .md)."""
    suffix = out.suffix.lower()
    if suffix not in (".html", ".md"):
        raise UserError(f"--out {out}: the report is written as .html (self-contained) or .md (PNGs beside it)")
    runs = load_runs(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        figures = _figures(runs, Path(tmp))
        text = _html(runs, figures) if suffix == ".html" else _markdown(runs, figures, out)
    out.write_text(text, encoding="utf-8")
    return out


def _html(runs: list[Run], figures: list[tuple[str, Path]]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>llmtune report: {esc(', '.join(r.label for r in runs))}"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>",
             f"<h1>Runs: {esc(', '.join(r.label for r in runs))}</h1>"]  # fmt: skip
    for title, header, rows in _tables(runs):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr>")
        parts += [f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in row)}</tr>" for row in rows] + ["</table>"]
    parts.append("<h2>Curves</h2>")
    for key, path in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{esc(key)}' src='data:image/png;base64,{data}'></figure>")
    return "\n".join(parts) + "\n"


def _markdown(runs: list[Run], figures: list[tuple[str, Path]], out: Path) -> str:
    lines = [f"# Runs: {', '.join(r.label for r in runs)}", ""]
    for title, header, rows in _tables(runs):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
    lines += ["## Curves", ""]
    for key, path in figures:
        target = out.with_name(f"{out.stem}-{path.name}")
        target.write_bytes(path.read_bytes())
        lines += [f"![{key}]({target.name})", ""]
    return "\n".join(lines) + "\n"
