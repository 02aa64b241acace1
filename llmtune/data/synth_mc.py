"""A tiny synthetic exam (multiple choice, MMLU layout) whose answers are checkable: arithmetic in a few subjects,
four choices each, the right one at a random letter; a dev split of five per subject for k-shot prompts."""

from __future__ import annotations

import random
from collections.abc import Callable

SUBJECTS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "addition": lambda r: (lambda a, b: (f"What is {a} + {b}?", a + b))(r.randint(2, 49), r.randint(2, 49)),
    "subtraction": lambda r: (lambda a, b: (f"What is {a + b} - {b}?", a))(r.randint(2, 49), r.randint(2, 49)),
    "multiplication": lambda r: (lambda a, b: (f"What is {a} * {b}?", a * b))(r.randint(2, 12), r.randint(2, 12)),
}
DEV_PER_SUBJECT = 5


def mc_question(subject: str, rng: random.Random) -> dict:
    """{"question", "subject", "choices" (4 numbers as text), "answer" (the index of the right one)}."""
    question, right = SUBJECTS[subject](rng)
    wrong: set[int] = set()
    while len(wrong) < 3:
        candidate = right + rng.choice([-10, -2, -1, 1, 2, 10]) * rng.randint(1, 3)
        if candidate != right and candidate >= 0:
            wrong.add(candidate)
    choices = [right, *sorted(wrong)]
    rng.shuffle(choices)
    return {"question": question, "subject": subject, "choices": [str(c) for c in choices],
            "answer": choices.index(right)}  # fmt: skip


def mc_rows(n: int, seed: int, split: str) -> list[dict]:
    """`n` questions cycling through the subjects; `split` seeds its own stream so test and dev differ."""
    rng = random.Random(f"mc-{split}:{seed}")
    names = list(SUBJECTS)
    return [mc_question(names[i % len(names)], rng) for i in range(n)]
