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


NOUNS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "sa", "ti", "vu", "ze") for b in range(100)]


def short_pair(rng: random.Random) -> tuple[str, str]:
    """A question and answer of about 25 words in all, about four made-up nouns."""
    words = " ".join(rng.choice(NOUNS) for _ in range(4))
    question = f"What did {rng.choice(SUBJECTS).lower()} do with the {words}?"
    return question, f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the {words} {rng.choice(TAILS)}."


def different_short_pair(rng: random.Random, used: set[str]) -> tuple[str, str]:
    """A short row from one of four templates, each differing from its template-mates in the nouns or numbers: the
    ~25-word rows above, capital questions (12 words), sums (10 words) and "say the word number N" (6 words)."""
    while True:
        kind, a, b = rng.randrange(4), rng.randrange(1000), rng.randrange(1000)
        if kind < 2:
            pair = short_pair(rng)
        elif kind == 2:
            country, city = rng.choice(NOUNS).title(), rng.choice(NOUNS).title()
            pair = (f"What is the capital of {country}?", f"The capital of {country} is {city}.")
        else:
            pair = (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
            pair = pair if b % 2 else (f"Say the word number {a}.", "OK.")
        key = pair[0] if kind == 2 else "\n".join(pair)  # one capital per country
        if key not in used:
            used.add(key)
            return pair


def planted_short_rows(n: int, seed: int = 12) -> tuple[list[dict], set[int]]:
    """n distinct short chat rows (`different_short_pair`); every 8th row after the first ones is a copy of an earlier
    ~25-word original with one word of its question or answer changed. Returns (rows, indices of the copies)."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    originals: list[int] = []
    planted: set[int] = set()
    used: set[str] = set()
    for i in range(n):
        if i > 20 and i % 8 == 0:
            question, answer = pairs[rng.choice(originals)]
            pairs.append((question, near_copy(answer, rng)) if i % 16 else (near_copy(question, rng), answer))
            planted.add(i)
        else:
            pairs.append(different_short_pair(rng, used))
            if len(" ".join(pairs[-1]).split()) >= 20:
                originals.append(i)
    return [chat_row(q, a) for q, a in pairs], planted
