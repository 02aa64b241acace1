"""What `llmtune eval` shows and writes: one table with a column per model, a few held-out prompts with the
expected and generated answers, and the numbers as JSON (which `llmtune export` reads for its model card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.eval.job import EvalData, Result


def results_table(results: list[Result], title: str) -> Any:
    """A rich table: one row per metric, one column per model."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for result in results:
        table.add_column(result.label, justify="right")
    names = list(dict.fromkeys(name for result in results for name in result.metrics))
    for name in names:
        cells = [result.metrics.get(name) for result in results]
        table.add_row(name, *("-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.4f}" for v in cells))
    return table


def show_examples(data: EvalData, results: list[Result], n: int) -> None:
    """Print the first `n` held-out prompts with the expected answer and each model's generated answer, so a run
    is judged by what it says as well as by its numbers."""
    from rich.markup import escape

    chats = [row for row in data.rows if row.get("messages")]
    shown = console.stdout()
    for i, row in enumerate(chats[:n]):
        prompt, expected = row["messages"][-2]["content"], row["messages"][-1]["content"]
        shown.print(f"[bold]prompt {i + 1}:[/bold] {escape(prompt)}")
        shown.print(f"  [dim]expected[/dim]  {escape(expected)}")
        for result in results:
            answer = result.generations[i] if i < len(result.generations) else "(not generated)"
            shown.print(f"  [cyan]{escape(result.label)}[/cyan]  {escape(answer.strip())}")


def write_results(path: Path, data: EvalData, results: list[Result]) -> None:
    """JSON: {"data", "kind", "rows", "models": [{"label", "metrics", "generations"}]} (read by `llmtune export`)."""
    payload = {
        "data": data.label,
        "kind": data.kind,
        "rows": len(data.rows),
        "models": [{"label": r.label, "metrics": r.metrics, "generations": r.generations} for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
