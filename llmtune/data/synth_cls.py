"""A small labelled classification set whose labels are checkable from the text: each sentence names two things of
one topic (animal, food or weather) among two neutral objects, in one of a few sentence shapes."""

from __future__ import annotations

import random
from collections.abc import Iterable

TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "fox", "owl", "cow", "pig", "hen", "bird", "fish", "frog", "lion", "bear", "wolf", "goat"),
    "food": ("egg", "jam", "tea", "fig", "nut", "milk", "rice", "cake", "corn", "salt", "bread", "soup", "apple"),
    "weather": ("sun", "rain", "snow", "wind", "fog", "storm", "cloud", "frost", "hail", "mist", "heat", "ice"),
}
NEUTRAL_WORDS = ("map", "cup", "pen", "box", "hat", "bed", "car", "bus", "bag", "key", "rug", "lamp", "desk", "door",
                 "book", "ring", "bell", "drum", "kite", "van")  # fmt: skip
SHAPES = (
    "The {a} and the {b} were next to the {n1}.",
    "Today I thought about a {a}, a {n1} and a {b}.",
    "There is a {n1} by the {a}; later the {b} came near the {n2}.",
    "My {n1} reminds me of the {a} and the {b}.",
    "She drew a {a} on the {n1}, then a {b} beside the {n2}.",
)


def cls_label(text: str) -> str | None:
    """The topic whose words the text names (None when it names none, or words of two topics)."""
    words = set(text.lower().replace(".", " ").replace(",", " ").replace(";", " ").split())
    found = {topic for topic, vocab in TOPIC_WORDS.items() if words & set(vocab)}
    return found.pop() if len(found) == 1 else None


def cls_example(topic: str, rng: random.Random) -> dict:
    a, b = rng.sample(TOPIC_WORDS[topic], 2)
    n1, n2 = rng.sample(NEUTRAL_WORDS, 2)
    return {"text": rng.choice(SHAPES).format(a=a, b=b, n1=n1, n2=n2), "label": topic}


def cls_rows(n: int, seed: int, split: str, exclude: Iterable[str] = ()) -> list[dict]:
    """`n` {"text", "label"} rows cycling through the topics (balanced), texts distinct and none in `exclude`."""
    rng = random.Random(f"cls-{split}:{seed}")
    topics, seen, rows = list(TOPIC_WORDS), set(exclude), []
    for i in range(n):
        tries = (cls_example(topics[i % len(topics)], rng) for _ in range(100))
        row = next(r for r in tries if r["text"] not in seen)
        seen.add(row["text"])
        rows.append(row)
    return rows
