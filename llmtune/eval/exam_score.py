"""Scoring exam questions by log-likelihood, as lm-evaluation-harness scores `multiple_choice` tasks.

Each (prompt, continuation) pair is encoded as the harness does for causal models: trailing spaces of the prompt
move to the continuation, the whole string is encoded with the tokenizer's defaults, and the continuation is what
follows the prompt's own encoding; the sequence is cut from the left to the context window. The choice with the
highest summed log-prob wins (`letter`), or the highest log-prob per character of the choice text (`text`, the
harness's acc_norm). All pairs of all questions go through `scored_logprobs` in padded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmtune.data.formats import IGNORE
from llmtune.eval.exams import LETTERS, Question, continuations, prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SCORES = ("letter", "text")


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the way lm-eval's `_encode_pair` splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def pair_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    window: int,
    batch_size: int,
) -> list[float]:
    """log p(continuation | context) for each pair, batched; at most `window` tokens are fed (cut from the left)."""
    from llmtune.eval.measure import scored_logprobs

    ids, labels = [], []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        seq = (context_ids + continuation_ids)[-window:]
        n = len(continuation_ids)
        ids.append(seq)
        labels.append([IGNORE] * (len(seq) - n) + seq[len(seq) - n :])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return scored_logprobs(model, ids, labels, pad, batch_size)[0]


def exam_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    shots: Sequence[list[Question]],
    *,
    score: str = "letter",
    window: int = 2048,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[str]]:
    """accuracy (micro), accuracy_macro and accuracy/<subject> when rows have subjects, the count of questions;
    and each question's predicted letter."""
    pairs, spans = [], []
    for q, examples in zip(questions, shots, strict=True):
        text = prompt(q, examples)
        spans.append((len(pairs), len(q.choices)))
        pairs += [(text, cont) for cont in continuations(q, score)]
    logps = pair_logprobs(model, tokenizer, pairs, window=window, batch_size=batch_size)
    predicted = []
    for q, (start, n) in zip(questions, spans, strict=True):
        scores = logps[start : start + n]
        if score == "text":
            scores = [lp / max(len(choice), 1) for lp, choice in zip(scores, q.choices, strict=True)]
        predicted.append(max(range(n), key=scores.__getitem__))
    return _accuracies(questions, predicted), [LETTERS[i] for i in predicted]


def _accuracies(questions: Sequence[Question], predicted: list[int]) -> dict[str, float]:
    right = [p == q.answer for q, p in zip(questions, predicted, strict=True)]
    metrics: dict[str, float] = {"accuracy": sum(right) / len(right)}
    subjects: dict[str, list[bool]] = {}
    for q, ok in zip(questions, right, strict=True):
        if q.subject:
            subjects.setdefault(q.subject, []).append(ok)
    if subjects:
        per_subject = {name: sum(oks) / len(oks) for name, oks in sorted(subjects.items())}
        metrics["accuracy_macro"] = sum(per_subject.values()) / len(per_subject)
        metrics.update({f"accuracy/{name}": value for name, value in per_subject.items()})
    metrics["questions"] = len(questions)
    return metrics
