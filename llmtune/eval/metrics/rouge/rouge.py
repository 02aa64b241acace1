"""ROUGE-1/2/L F-measures averaged over examples, as an `evaluate` metric module loaded by path (offline).

Scores come from Google's `rouge_score` package (the `metrics` extra); no tokenizer data is downloaded.
"""

import datasets
import evaluate

_DESCRIPTION = """ROUGE n-gram (rouge1, rouge2) and longest-common-subsequence (rougeL) overlap, F-measure, mean."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): reference texts, one per prediction.
    rouge_types (list of str): any of rouge1, rouge2, rougeL, rougeLsum. Default all but rougeLsum.
    use_stemmer (bool): Porter-stem words before matching. Default False.
Returns:
    one float in [0, 1] per rouge type: the F-measure averaged over examples.
Examples:
    >>> metric = evaluate.load("llmtune/metrics/rouge/rouge.py")
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False):
        try:
            from rouge_score import rouge_scorer
        except ImportError as exc:
            raise ImportError("the rouge metric needs rouge-score: pip install 'llmtune[metrics]'") from exc
        types = list(rouge_types or ["rouge1", "rouge2", "rougeL"])
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        totals = dict.fromkeys(types, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)
            for name in types:
                totals[name] += scores[name].fmeasure
        count = max(len(predictions), 1)
        return {name: total / count for name, total in totals.items()}
