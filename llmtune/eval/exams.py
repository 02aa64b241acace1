"""Multiple-choice exams: rows in the MMLU, C-Eval/CMMLU or plain {question, choices, answer} layouts -> questions,
and the prompt lm-evaluation-harness's MMLU task builds for them, so our accuracy and the harness's compare.

The prompt (lm_eval/tasks/mmlu/default): "The following are multiple choice questions (with answers) about
{subject}.\\n\\n", then each shot "{question}\\nA. ..\\nB. ..\\nAnswer: {letter}\\n\\n", then the question
ending in "Answer:"; each choice is scored as the continuation " {letter}" (or " {text}" with --mc-score text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtune.errors import UserError

LETTERS = "ABCDEFGHIJ"
MIN_CHOICES, MAX_CHOICES = 2, len(LETTERS)


@dataclass(frozen=True)
class Question:
    """One exam question: the choices in order, the index of the right one, its subject (or None)."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None
    origin: str


def looks_like_mc(raw: Any) -> bool:
    """True for rows shaped like an exam question: a question with a choices list or A/B letter columns."""
    if not isinstance(raw, dict):
        return False
    keys = {str(k).lower() for k in raw}
    return "question" in keys and ("choices" in keys or {"a", "b"} <= keys) and "answer" in keys


def _choices(row: dict[str, Any], where: str) -> list[str]:
    choices = row.get("choices")
    if isinstance(choices, dict) and isinstance(choices.get("text"), list):  # ARC: {"text": [...], "label": [...]}
        choices = choices["text"]
    if choices is None:  # C-Eval / CMMLU: one column per letter
        choices = [row[letter.lower()] for letter in LETTERS if letter.lower() in row]
    if not isinstance(choices, list) or not all(isinstance(c, str | int | float) for c in choices):
        raise UserError(f"{where}: 'choices' must be a list of texts (or give columns A, B, C, ...)")
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise UserError(f"{where}: {len(choices)} choices; an exam question needs {MIN_CHOICES} to {MAX_CHOICES}")
    return [str(c) for c in choices]


def _answer(value: Any, choices: list[str], where: str) -> int:
    """The right choice's index from a letter ("B"), an index (1 or "1") or the choice's text."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    elif text.isdigit():
        index = int(text)
    elif text in choices:
        index = choices.index(text)
    if index is None or not 0 <= index < len(choices):
        valid = f"a letter A-{LETTERS[len(choices) - 1]}, an index 0-{len(choices) - 1} or one of the choices' texts"
        raise UserError(f"{where}: answer {value!r} is not {valid}")
    return index


def to_question(raw: Any, where: str) -> Question:
    """A raw exam row (column names in any case) -> a Question; a UserError naming the row when malformed."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: an exam row must be an object, not {type(raw).__name__}")
    row = {str(k).lower(): v for k, v in raw.items()}
    missing = [key for key in ("question", "answer") if row.get(key) in (None, "")]
    if missing:
        raise UserError(f"{where}: an exam row needs {' and '.join(missing)} (columns: question, choices, answer)")
    choices = _choices(row, where)
    subject = row.get("subject")
    return Question(
        str(row["question"]), tuple(choices), _answer(row["answer"], choices, where), subject or None, where
    )


def read_questions(
    path: str, *, split: str = "test", subset: str | None = None, endpoint: str | None = None, limit: int | None = None
) -> list[Question]:
    """Exam questions from a local file (jsonl/json/csv/parquet), a dataset folder or a Hub dataset id."""
    from llmtune.data.formats import RowError
    from llmtune.data.readers import read_raw, resolve_path

    local = resolve_path(path, "main", endpoint)
    questions = []
    for where, raw in read_raw(local, path, split if local.is_dir() else "train", subset):
        if isinstance(raw, RowError):
            raise UserError(f"{where}: {raw}")
        questions.append(to_question(raw, where))
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise UserError(f"{path}: no exam questions")
    return questions


def description(subject: str | None) -> str:
    """lm-eval's MMLU description line ("about abstract algebra" from the subject abstract_algebra)."""
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    return f"The following are multiple choice questions (with answers){about}.\n\n"


def question_text(q: Question) -> str:
    """lm-eval's MMLU doc_to_text: the question, one "X. choice" line per choice, then "Answer:"."""
    lines = [q.question.strip(), *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices))]
    return "\n".join(lines) + "\nAnswer:"


def prompt(q: Question, shots: list[Question]) -> str:
    """The description, each shot answered (" {letter}") and separated by a blank line, then the question."""
    answered = "".join(f"{question_text(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return description(q.subject) + answered + question_text(q)


def shots_for(questions: list[Question], dev: list[Question], k: int) -> list[list[Question]]:
    """The first k dev questions of each question's subject (lm-eval's first_n sampler over the dev split)."""
    if k == 0:
        return [[] for _ in questions]
    by_subject: dict[str | None, list[Question]] = {}
    for d in dev:
        by_subject.setdefault(d.subject, []).append(d)
    out = []
    for q in questions:
        pool = by_subject.get(q.subject, []) if q.subject else dev
        if len(pool) < k:
            about = f"subject {q.subject!r}" if q.subject else "the exam"
            raise UserError(f"--shots {k}: the dev questions have only {len(pool)} for {about} ({q.origin})")
        out.append(pool[:k])
    return out


def continuations(q: Question, score: str) -> list[str]:
    """What each choice is scored as after the prompt: " A", " B", ... or " {choice text}"."""
    return [f" {LETTERS[i]}" if score == "letter" else f" {c}" for i, c in enumerate(q.choices)]
