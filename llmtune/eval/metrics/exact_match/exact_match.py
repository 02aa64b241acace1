"""Exact match for generated answers, as an `evaluate` metric module loaded by path (offline).

By default a prediction matches when equal to its reference after stripping whitespace and one trailing period,
the rule the built-in tasks' `check_answer` uses; `strict=True` compares the raw strings.
"""

import datasets
import evaluate

_DESCRIPTION = """Fraction of predictions equal to their reference (after light normalisation unless strict)."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): expected answers, one per prediction.
    strict (bool): compare raw strings; default False strips whitespace and one trailing period.
    ignore_case (bool): lower-case both sides first. Default False.
Returns:
    exact_match (float): share of matches in [0, 1].
Examples:
    >>> metric = evaluate.load("llmtune/metrics/exact_match/exact_match.py")
    >>> metric.compute(predictions=["8.", "cat"], references=["8", "dog"])
    {'exact_match': 0.5}
"""


def _normalise(text: str, strict: bool, ignore_case: bool) -> str:
    if not strict:
        text = text.strip()
        text = text[:-1].rstrip() if text.endswith(".") else text
    return text.lower() if ignore_case else text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, strict=False, ignore_case=False):
        if not predictions:
            return {"exact_match": 0.0}
        hits = sum(
            _normalise(p, strict, ignore_case) == _normalise(r, strict, ignore_case)
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(predictions)}
