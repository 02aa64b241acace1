"""`llmtune eval` as a job: read the eval data (a file or a recipe's eval split), evaluate one or several models on
it one at a time, print one table with a column per model and write the numbers as JSON.

Which numbers depends on the rows: text -> perplexity, bits per char/byte; chat -> perplexity on the trained tokens,
exact match, ROUGE-L (and a --reward model's score) of generated answers; preference pairs -> reward or implicit DPO
accuracy; exams -> accuracy (llmtune.eval.exams); labelled texts -> a classifier's accuracy and macro F1;
lm-evaluation-harness tasks (--harness) add their own numbers.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.data.formats import Row
from llmtune.errors import UserError
from llmtune.infer.generate import DecodeOptions
from llmtune.infer.load import Loaded, load_for_inference
from llmtune.infer.score import generated_reward, load_scorer

if TYPE_CHECKING:
    from llmtune.schema import Recipe

MAX_DEFAULT_CONTEXT = 2048


@dataclass
class EvalData:
    """Canonical rows of one kind (text, chat or preference) and how to name them."""

    kind: str
    rows: list[Row]
    label: str
    loss_on: str = "all_assistant"
    max_length: int | None = None
    shots: list[list[Any]] = field(default_factory=list)
    """For exams (kind "mc", rows are `exams.Question`s): each question's answered examples."""


@dataclass
class EvalOptions:
    batch_size: int = 8
    context: int | None = None
    generate: bool = True
    decode: DecodeOptions = field(default_factory=lambda: DecodeOptions(max_new_tokens=64))
    dtype: str = "auto"
    endpoint: str | None = None
    mc_score: str = "letter"
    harness: list[str] = field(default_factory=list)
    harness_include: str | None = None
    shots: int | None = None
    reward: str | None = None  # a reward model scoring the generated answers (chat data): the `reward` column


@dataclass
class Result:
    label: str
    metrics: dict[str, float]
    generations: list[str] = field(default_factory=list)


def _with_answer(raw: Any) -> Any:
    """Eval rows {"messages": [..., user], "answer": A} (the built-in eval files) become a conversation ending in A."""
    if isinstance(raw, dict) and isinstance(raw.get("messages"), list) and isinstance(raw.get("answer"), str):
        messages = raw["messages"]
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
            return {"messages": [*messages, {"role": "assistant", "content": raw["answer"]}]}
    return raw


def read_eval_file(
    path: str, fmt: str | None = None, max_samples: int | None = None, endpoint: str | None = None
) -> EvalData:
    """The first `max_samples` rows of a data file in any supported format, converted to canonical rows."""
    from llmtune.data.formats import KIND_OF_FORMAT, RowError, convert, detect_format
    from llmtune.data.readers import read_raw, resolve_path

    if fmt is not None and fmt not in KIND_OF_FORMAT:
        raise UserError(f"--format {fmt!r} is not a row format; choose one of {', '.join(KIND_OF_FORMAT)}")
    rows: list[Row] = []
    for where, raw in read_raw(resolve_path(path, "main", endpoint), path, "train", None):
        try:
            if isinstance(raw, RowError):
                raise raw
            raw = _with_answer(raw)
            fmt = fmt or detect_format(raw)
            rows.extend({**row, "origin": where} for row in convert(fmt, raw))
        except RowError as exc:
            raise UserError(f"{where}: {exc}") from None
        if max_samples is not None and len(rows) >= max_samples:
            break
    if not rows:
        raise UserError(f"--data {path}: no rows")
    return EvalData(KIND_OF_FORMAT[fmt], rows[:max_samples], path)


def is_exam_file(path: str, endpoint: str | None = None, split: str = "test", subset: str | None = None) -> bool:
    """True when the first row of the file looks like an exam question (question, choices or A/B..., answer)."""
    from llmtune.data.readers import read_raw, resolve_path
    from llmtune.eval.exams import looks_like_mc

    local = resolve_path(path, "main", endpoint)
    first = next(iter(read_raw(local, path, split if local.is_dir() else "train", subset)), (None, None))[1]
    return looks_like_mc(first)


def read_exam(
    path: str, *, dev: str | None = None, shots: int = 0, split: str = "test", subset: str | None = None,
    max_samples: int | None = None, endpoint: str | None = None,
) -> EvalData:  # fmt: skip
    """Exam questions and, for k-shot, each one's examples: the first k of its subject in --dev (a file, or the
    "dev" split of a dataset folder or Hub id)."""
    from llmtune.eval.exams import read_questions, shots_for

    questions = read_questions(path, split=split, subset=subset, endpoint=endpoint, limit=max_samples)
    examples: list = []
    if shots:
        if dev is None and not Path(path).is_file():
            dev = path
        if dev is None:
            raise UserError(f"--shots {shots}: give --dev FILE, the exam's dev split to take the examples from")
        examples = read_questions(dev, split="dev", subset=subset, endpoint=endpoint)
    return EvalData("mc", list(questions), path, shots=shots_for(questions, examples, shots))


def recipe_eval_data(recipe: Recipe, max_samples: int | None = None) -> EvalData:
    """The recipe's eval split (its eval sources, or eval_ratio of the training rows), read as training reads it."""
    from llmtune.data.load import read_splits, stage_kind

    splits = read_splits(recipe)
    if not splits.eval:
        raise UserError("the recipe has no eval data: add data.eval sources or set data.eval_ratio, or pass --data")
    rows = splits.eval[:max_samples]
    return EvalData(stage_kind(recipe.stage), rows, "recipe eval split", recipe.data.loss_on, recipe.data.max_length)


def _context(loaded: Loaded, wanted: int | None) -> int:
    limit = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None) or MAX_DEFAULT_CONTEXT
    if wanted is not None and wanted > limit:
        raise UserError(f"--context {wanted} exceeds the model's {limit} positions")
    return wanted or min(limit, MAX_DEFAULT_CONTEXT)


def evaluate_loaded(loaded: Loaded, data: EvalData, options: EvalOptions, reference: Loaded | None = None) -> Result:
    """Every metric that fits the data and the model's head, then those of the --harness tasks."""
    result = _data_result(loaded, data, options, reference) if data.rows else Result(loaded.label, {})
    if options.harness:
        from llmtune.eval.harness import harness_metrics

        result.metrics.update(
            harness_metrics(
                loaded.model,
                loaded.tokenizer,
                options.harness,
                include=options.harness_include,
                shots=options.shots,
                batch_size=options.batch_size,
                window=_context(loaded, options.context),
            )  # fmt: skip
        )
    return result


def _data_result(loaded: Loaded, data: EvalData, options: EvalOptions, reference: Loaded | None) -> Result:
    from llmtune.eval import measure as ev

    model, tok, bs = loaded.model, loaded.tokenizer, options.batch_size
    if data.kind == "mc":
        from llmtune.eval.exam_score import exam_metrics

        if loaded.head == "sequence_classification":
            raise UserError(f"{loaded.label} is a reward model; exams score a language model's answer letters")

        window = _context(loaded, options.context)
        metrics, predicted = exam_metrics(
            model, tok, data.rows, data.shots, score=options.mc_score, window=window, batch_size=bs
        )
        return Result(loaded.label, metrics, predicted)
    if data.kind == "cls":
        from llmtune.eval.classify import classification_metrics

        return Result(loaded.label, classification_metrics(loaded, data.rows, data.max_length, bs))
    if data.kind == "text":
        texts = [row["text"] for row in data.rows]
        return Result(
            loaded.label,
            ev.text_perplexity(model, tok, texts, context=_context(loaded, options.context), batch_size=bs),
        )
    if data.kind == "preference":
        if loaded.head == "sequence_classification":
            return Result(loaded.label, ev.reward_metrics(model, tok, data.rows, bs))
        ref_model = reference.model if reference is not None else None
        is_base = reference is None and loaded.adapter is not None
        return Result(
            loaded.label,
            ev.preference_metrics(model, tok, data.rows, reference=ref_model, reference_is_base=is_base, batch_size=bs),
        )
    if loaded.head == "sequence_classification":
        raise UserError(f"{loaded.label} is a reward model; evaluate it on preference pairs (chosen/rejected rows)")
    max_length = data.max_length or _context(loaded, None)
    metrics = ev.chat_perplexity(model, tok, data.rows, loss_on=data.loss_on, max_length=max_length, batch_size=bs)
    chats = [row for row in data.rows if row.get("messages")]
    generations: list[str] = []
    if options.generate and chats:
        found, generations = ev.generation_metrics(model, tok, chats, options.decode, batch_size=max(bs, 16))
        metrics.update(found)
    return Result(loaded.label, metrics, generations)


def _free(loaded: Loaded | None) -> None:
    if loaded is None:
        return
    del loaded.model
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_eval(
    specs: list[tuple[str | None, str | None]], data: EvalData, options: EvalOptions, reference: str | None = None
) -> list[Result]:
    """Evaluate each (model, adapter) spec in turn, loading one model (plus the reference) at a time."""
    ref = load_for_inference(reference, dtype=options.dtype, endpoint=options.endpoint) if reference else None
    scorer = load_scorer(options.reward, endpoint=options.endpoint) if options.reward else None
    results = []
    try:
        for model, adapter in specs:
            loaded = load_for_inference(model, adapter, dtype=options.dtype, endpoint=options.endpoint)
            console.info(f"evaluating {loaded.label}", markup=False)
            try:
                results.append(evaluate_loaded(loaded, data, options, ref))
                if scorer is not None:
                    results[-1].metrics["reward"] = generated_reward(scorer, data.rows, results[-1].generations)
            finally:
                _free(loaded)
    finally:
        _free(ref)
        _free(scorer)
    return results


def plan_specs(
    model: str | None, adapter: str | None, compare: list[str], recipe: Recipe | None
) -> list[tuple[str | None, str | None]]:
    """The models to evaluate, in column order: --model/--adapter (else the recipe's run, output.dir, when it
    exists), then each --compare."""
    specs: list[tuple[str | None, str | None]] = [(model, adapter)] if model or adapter else []
    if not specs and recipe is not None:
        if Path(recipe.output.dir).is_dir():
            specs = [(recipe.output.dir, None)]
        elif not compare:
            raise UserError(f"the recipe's run {recipe.output.dir} does not exist yet; train it or pass --model")
    specs += [(spec, None) for spec in compare]
    if not specs:
        raise UserError("nothing to evaluate: pass --model and/or --adapter, or --compare SPEC (repeatable)")
    return specs
