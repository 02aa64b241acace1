"""Templates for the built-in synthetic tasks: tiny questions with one checkable answer and a plausible wrong one.

Every word here is written for this project, so the data can ship with it. Tasks are easy on purpose: a 2-layer
model fine-tuned for minutes on a CPU should visibly improve on them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

WORDS = (  # noqa: SIM905 - one readable block, not 80 quoted lines
    "cat dog sun map cup pen box hat bed car bus fox owl ant bee cow pig hen egg jam tea ice oak elm fig nut bag "
    "key net rug log web jet van arm leg ear lip toe sky sea bird fish frog lion bear wolf duck goat lamp desk door "
    "book milk rice cake corn rain snow wind star moon leaf tree rose ship boat ring bell drum kite nest sand rock "
    "gold salt song word hand foot"
).split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
UNITS = (("km", "m", 1000, 100), ("m", "cm", 100, 10), ("kg", "g", 1000, 100), ("h", "min", 60, 100))


@dataclass(frozen=True)
class Example:
    """One question: `prompt` is the full question; when `input` is set, the prompt is `instruction + "\\n" + input`.

    `explanation` says the same fact in a plain sentence, for the text corpus.
    """

    task: str
    prompt: str
    answer: str
    wrong: str
    input: str = ""
    explanation: str = ""

    @property
    def instruction(self) -> str:
        """The prompt without its input line (the alpaca `instruction` field)."""
        return self.prompt[: -len(self.input) - 1] if self.input else self.prompt

    def as_sentence(self) -> str:
        """The question and its answer as one line of prose, for the text corpus."""
        question = f"{self.instruction.rstrip('.')}: {self.input}" if self.input else self.prompt
        return f"{question}{'' if question[-1] in '?.' else '.'} The answer is {self.answer}."


def check_answer(expected: str, generated: str) -> bool:
    """Exact match after stripping whitespace and one trailing period: "8." and " 8" both match "8"."""
    return _normalize(expected) == _normalize(generated)


def _normalize(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _example(
    rng: random.Random,
    task: str,
    values: dict[str, object],
    answer: str,
    wrong: str,
    phrasings: tuple[str, ...],
    split: tuple[str, str],
    explanations: tuple[str, ...],
) -> Example:
    """Pick one of the phrasings (the last choice puts the operands on an input line of their own)."""
    choice = rng.randrange(len(phrasings) + 1)
    if choice < len(phrasings):
        prompt, input_line = phrasings[choice].format(**values), ""
    else:
        input_line = split[1].format(**values)
        prompt = f"{split[0].format(**values)}\n{input_line}"
    explanation = rng.choice(explanations).format(**values, answer=answer)
    return Example(task, prompt, answer, wrong, input_line, explanation)


def add(rng: random.Random) -> Example:
    a, b = rng.randrange(10), rng.randrange(10)
    total = a + b
    wrong = total + 1 if total == 0 or rng.random() < 0.5 else total - 1
    return _example(
        rng,
        "add",
        {"a": a, "b": b},
        str(total),
        str(wrong),
        ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
        ("Add the two numbers.", "{a} {b}"),
        ("{a} plus {b} is {answer}.", "Adding {a} and {b} gives {answer}.", "The sum of {a} and {b} is {answer}."),
    )


def subtract(rng: random.Random) -> Example:
    a = rng.randrange(10)
    b = rng.randrange(a + 1)
    diff = a - b
    wrong = diff + 1 if diff == 0 or rng.random() < 0.5 else diff - 1
    return _example(
        rng,
        "subtract",
        {"a": a, "b": b},
        str(diff),
        str(wrong),
        ("What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."),
        ("Subtract the second number from the first.", "{a} {b}"),
        ("{a} minus {b} is {answer}.", "Taking {b} away from {a} leaves {answer}.", "{a} - {b} equals {answer}."),
    )


def reverse(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    answer = word[::-1]
    wrong = word if rng.random() < 0.5 else answer[1] + answer[0] + answer[2:]
    if wrong == answer:
        wrong = word
    return _example(
        rng,
        "reverse",
        {"word": word},
        answer,
        wrong,
        ("Reverse the word: {word}", "Write {word} backwards.", "What is {word} spelled backwards?"),
        ("Reverse the word.", "{word}"),
        ("Reversing the word {word} gives {answer}.", "The word {word} written backwards is {answer}."),
    )


def sort_digits(rng: random.Random) -> Example:
    digits = rng.sample(range(10), 3)
    ordered = sorted(digits)
    if rng.random() < 0.5:
        wrong_digits = ordered[::-1]
    else:
        i = rng.randrange(2)
        wrong_digits = ordered[:i] + [ordered[i + 1], ordered[i]] + ordered[i + 2 :]
    numbers = " ".join(map(str, digits))
    return _example(
        rng,
        "sort",
        {"numbers": numbers, "listed": ", ".join(map(str, digits))},
        " ".join(map(str, ordered)),
        " ".join(map(str, wrong_digits)),
        ("Sort: {numbers}", "Sort these digits from smallest to largest: {numbers}", "Put {listed} in order."),
        ("Sort the digits from smallest to largest.", "{numbers}"),
        ("Sorting {numbers} from smallest to largest gives {answer}.", "In order, {listed} become {answer}."),
    )


def convert(rng: random.Random) -> Example:
    n = rng.randint(1, 9)
    unit, target, factor, wrong_factor = rng.choice(UNITS)
    values = {"n": n, "unit": unit, "target": target}
    return _example(
        rng,
        "convert",
        values,
        f"{n * factor} {target}",
        f"{n * wrong_factor} {target}",
        ("Convert {n} {unit} to {target}.", "How many {target} are in {n} {unit}?", "Express {n} {unit} in {target}."),
        ("Convert to {target}.", "{n} {unit}"),
        ("{n} {unit} is {answer}.", "Converting {n} {unit} to {target} gives {answer}."),
    )


def uppercase(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    return _example(
        rng,
        "uppercase",
        {"word": word},
        word.upper(),
        word.capitalize(),
        ("Uppercase the word: {word}", "Write {word} in capital letters.", "What is {word} in uppercase?"),
        ("Write the word in capital letters.", "{word}"),
        ("The word {word} in capital letters is {answer}.", "In uppercase, {word} becomes {answer}."),
    )


def count_letters(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    wrong = len(word) + rng.choice((-1, 1))
    return _example(
        rng,
        "count",
        {"word": word, "spelled": ", ".join(word)},
        str(len(word)),
        str(wrong),
        ("How many letters are in the word {word}?", "Count the letters in {word}.", "How long is the word {word}?"),
        ("Count the letters in the word.", "{word}"),
        (
            "The word {word} has {answer} letters.",
            "The letters of {word} in order are {spelled}, so it has {answer} letters.",
        ),
    )


def next_letter(rng: random.Random) -> Example:
    i = rng.randrange(len(LETTERS) - 1)
    letter, answer = LETTERS[i], LETTERS[i + 1]
    wrong = LETTERS[i - 1] if i > 0 and rng.random() < 0.5 else LETTERS[min(i + 2, len(LETTERS) - 1)]
    if wrong == answer:
        wrong = letter
    return _example(
        rng,
        "next_letter",
        {"letter": letter},
        answer,
        wrong,
        (
            "What letter comes after {letter}?",
            "Which letter follows {letter} in the alphabet?",
            "Name the letter after {letter}.",
            "What is the next letter after {letter}?",
        ),
        ("Give the next letter of the alphabet.", "{letter}"),
        ("In the alphabet, the letter after {letter} is {answer}.", "The letter {answer} comes right after {letter}."),
    )


TASKS: dict[str, Callable[[random.Random], Example]] = {
    "add": add,
    "subtract": subtract,
    "reverse": reverse,
    "sort": sort_digits,
    "convert": convert,
    "uppercase": uppercase,
    "count": count_letters,
    "next_letter": next_letter,
}
TOPICS = {
    "add": "Some sums of small numbers.",
    "subtract": "Some differences of small numbers.",
    "reverse": "Some words written backwards.",
    "sort": "Some digits put in order.",
    "convert": "Some unit conversions.",
    "uppercase": "Some words in capital letters.",
    "count": "Some words and their lengths.",
    "next_letter": "Some letters of the alphabet.",
}
SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer with the result only.",
    "You are a careful assistant. Reply with just the answer.",
    "Answer the question briefly.",
    "You solve small puzzles. Give only the final answer.",
)
