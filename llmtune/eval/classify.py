"""A classifier on labelled texts (`llmtune eval`: accuracy, macro F1) and on any texts (`llmtune predict`: a label
and the class probabilities per row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune.data.formats import Row
from llmtune.errors import UserError
from llmtune.infer.load import Loaded

if TYPE_CHECKING:
    from rich.table import Table

MAX_DEFAULT_LENGTH = 2048


@dataclass
class Prediction:
    """One row's predicted label, its probability and every label's probability (and the label the row gave)."""

    text: str
    label: str
    probability: float
    probabilities: dict[str, float]
    expected: str | None = None

    def as_row(self) -> dict[str, Any]:
        row = {"text": self.text, "label": self.label, "probability": self.probability}
        row["probabilities"] = self.probabilities
        return row if self.expected is None else {**row, "expected": self.expected}


def check_classifier(loaded: Loaded) -> list[str]:
    """The model's label names; a UserError unless it is a classifier with two labels or more."""
    from llmtune.infer.classify import model_labels

    if loaded.head != "sequence_classification":
        raise UserError(
            f"{loaded.label} is a language model, not a classifier; predicting labels needs an `llmtune cls` run "
            "(or a model with a sequence-classification head)"
        )
    names = model_labels(loaded.model)
    if len(names) < 2:
        raise UserError(f"{loaded.label} has a single output (a reward model); labels need an `llmtune cls` run")
    return names


def max_length(loaded: Loaded, wanted: int | None = None) -> int:
    """Tokens kept per text: the one asked for, else the run's data.max_length (as trained), capped by the model."""
    limit = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None) or MAX_DEFAULT_LENGTH
    trained = loaded.recipe.data.max_length if loaded.recipe is not None else None
    return min(wanted or trained or limit, limit)


def predict(loaded: Loaded, texts: list[str], length: int, batch_size: int = 16) -> tuple[list[str], Any]:
    """(label names, probabilities [rows x labels]) for the texts."""
    from llmtune.infer.classify import predict_proba

    names = check_classifier(loaded)
    return names, predict_proba(loaded.model, loaded.tokenizer, texts, length, batch_size)


def classification_metrics(loaded: Loaded, rows: list[Row], length: int | None, batch_size: int) -> dict[str, float]:
    """Accuracy and macro F1 of a classifier on canonical cls rows, whose labels must be among the model's."""
    from llmtune.infer.classify import accuracy_and_macro_f1

    names = check_classifier(loaded)
    for row in rows:
        if row["label"] not in names:
            raise UserError(
                f"{row.get('origin', 'a row')}: label {row['label']!r} is not one of {loaded.label}'s labels "
                f"({', '.join(names)})"
            )
    _, probs = predict(loaded, [row["text"] for row in rows], max_length(loaded, length), batch_size)
    return accuracy_and_macro_f1(probs.argmax(-1).tolist(), [names.index(row["label"]) for row in rows])


def read_texts(path: str, endpoint: str | None = None, max_samples: int | None = None) -> list[tuple[str, Any]]:
    """(text, its label or None) per row of a file whose rows have a `text` column (a .txt: one row per line)."""
    from llmtune.data.formats import RowError
    from llmtune.data.readers import read_raw, resolve_path

    rows = []
    for where, raw in read_raw(resolve_path(path, "main", endpoint), path, "train", None):
        if isinstance(raw, RowError):
            raise UserError(f"{where}: {raw}")
        text = raw.get("text") if isinstance(raw, dict) else None
        if not isinstance(text, str) or not text.strip():
            columns = ", ".join(sorted(raw)) if isinstance(raw, dict) else type(raw).__name__
            raise UserError(f"{where}: a row needs a non-empty 'text' string to classify (it has: {columns})")
        rows.append((text, raw.get("label")))
        if max_samples is not None and len(rows) >= max_samples:
            break
    if not rows:
        raise UserError(f"--data {path}: no rows")
    return rows


def predict_rows(loaded: Loaded, rows: list[tuple[str, Any]], length: int, batch_size: int) -> list[Prediction]:
    names, probs = predict(loaded, [text for text, _ in rows], length, batch_size)
    out = []
    for (text, given), p in zip(rows, probs.tolist(), strict=True):
        best = max(range(len(names)), key=p.__getitem__)
        expected = None if given is None else str(given)
        out.append(Prediction(text, names[best], p[best], dict(zip(names, p, strict=True)), expected))
    return out


def write_predictions(predictions: list[Prediction], out: Path) -> None:
    """JSONL: {"text", "label", "probability", "probabilities": {label: p}, "expected" (when the row had a label)}."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(p.as_row(), ensure_ascii=False) + "\n" for p in predictions)
    out.write_text("".join(lines), encoding="utf-8")


def predictions_table(predictions: list[Prediction], title: str) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for name, justify in (("#", "right"), ("label", "left"), ("probability", "right"), ("text", "left")):
        table.add_column(name, justify=justify)
    if any(p.expected is not None for p in predictions):
        table.add_column("expected")
    for i, p in enumerate(predictions, start=1):
        text = p.text if len(p.text) <= 60 else p.text[:57] + "..."
        extra = [] if len(table.columns) == 4 else [escape(p.expected or "")]
        table.add_row(str(i), escape(p.label), f"{p.probability:.3f}", escape(text), *extra)
    return table
