"""Planted data for the clean tests and benchmark: distinct English documents and chat rows, with exact and near
duplicates of some of them planted at known places."""

from __future__ import annotations

import random

SUBJECTS = [
    "The old farmer",
    "A young teacher",
    "The city council",
    "My neighbour",
    "The river pilot",
    "Our small team",
    "The village baker",
    "A tired nurse",
    "The museum guide",
    "The new student",
]
VERBS = [
    "carried",
    "painted",
    "repaired",
    "described",
    "measured",
    "ordered",
    "planted",
    "cleaned",
    "studied",
    "counted",
]
OBJECTS = [
    "the wooden fence",
    "a basket of apples",
    "the broken clock",
    "the map of the valley",
    "a stack of letters",
    "the narrow bridge",
    "the garden wall",
    "a box of tools",
    "the bright lanterns",
    "the morning bread",
]
TAILS = ["before the rain came", "with great care and patience", "for the people of the town", "in the quiet evening",
         "while the children watched", "and then went home", "as the sun rose over the hills", "near the station",
         "after a long day of work", "without saying a word"]  # fmt: skip


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."


def document(rng: random.Random, sentences: int = 10) -> str:
    """About 100 words of plain English that passes the web-document rules (no phrase repeated within it)."""
    parts = [rng.sample(words, len(words)) for words in (SUBJECTS, VERBS, OBJECTS, TAILS)]
    return " ".join(f"{s} {v} {o} {t}." for s, v, o, t in list(zip(*parts, strict=True))[:sentences])


def near_copy(text: str, rng: random.Random) -> str:
    """The text with one word in its middle replaced: a near duplicate (5-gram Jaccard about 0.9)."""
    words = text.split(" ")
    i = len(words) // 2 + rng.randrange(-3, 4)
    words[i] = "zebra"
    return " ".join(words)


def planted_texts(n: int, seed: int = 0, dup_every: int = 10) -> tuple[list[str], set[int], set[int]]:
    """n texts; every `dup_every`-th (after the first ones) is an exact (case/space-changed) or near copy of an
    earlier one. Returns (texts, indices of exact copies, indices of near copies)."""
    rng = random.Random(seed)
    texts: list[str] = []
    exact, near = set(), set()
    for i in range(n):
        if i >= dup_every and i % dup_every == 0:
            source = texts[rng.randrange(0, i - 1)]
            if (i // dup_every) % 2:
                texts.append("  " + source.upper().replace(" ", "  "))
                exact.add(i)
            else:
                texts.append(near_copy(source, rng))
                near.add(i)
        else:
            texts.append(document(rng))
    return texts, exact, near


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
