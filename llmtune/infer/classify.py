"""Sequence classification: label names, the one tokenization training and prediction share, class probabilities,
and accuracy / macro F1.

A `llmtune cls` run writes its label names twice: as id2label / label2id in the model config (a full run's
config.json) and in `labels.json` beside the weights, which is how an adapter run (whose directory holds no model
config) gets its head's size and names back when it is reloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LABELS_FILE = "labels.json"


def label_order(labels: Iterable[str]) -> list[str]:
    """The sorted distinct labels: numerically when every label is an integer ("2" before "10"), else as text."""
    names = set(labels)
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def label_maps(names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id) for the label names in id order."""
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def write_labels(names: Sequence[str], out: Path) -> Path:
    """DIR/labels.json: {"labels": [names in id order]}."""
    path = Path(out) / LABELS_FILE
    path.write_text(json.dumps({"labels": list(names)}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_labels(directory: Path | None) -> list[str] | None:
    """The label names a cls run wrote into `directory`, or None when it has no labels.json."""
    path = Path(directory) / LABELS_FILE if directory is not None else None
    if path is None or not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the label names in {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: 'labels' must list at least two label names (strings)")
    return names


def model_labels(model: PreTrainedModel) -> list[str]:
    """The label names of a classifier, in id order, from its config (LABEL_i where it names none)."""
    config = model.config
    return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to max_length: the same for training, eval and predict."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def predict_proba(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> torch.Tensor:
    """Class probabilities, one row per text (float32 on the CPU), padded on the right with the pad id."""
    import torch

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        ids = encode(tokenizer, texts[start : start + batch_size], max_length)
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.num_labels)


def accuracy_and_macro_f1(predicted: Sequence[int], expected: Sequence[int]) -> dict[str, float]:
    """Accuracy, and F1 averaged over the classes that occur in either list (scikit-learn's macro average).

    A plain function rather than an `evaluate` module: the trainer (stages) needs it too, below the layer of the
    shipped metric scripts, and the arithmetic is a few lines.
    """
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} references")
    if not expected:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    pairs = list(zip(predicted, expected, strict=True))
    scores = []
    for c in sorted(set(predicted) | set(expected)):
        hits = sum(p == c and e == c for p, e in pairs)
        claimed, actual = sum(p == c for p in predicted), sum(e == c for e in expected)
        scores.append(2 * hits / (claimed + actual) if claimed + actual else 0.0)
    return {"accuracy": sum(p == e for p, e in pairs) / len(pairs), "macro_f1": sum(scores) / len(scores)}
