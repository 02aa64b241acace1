"""Built-in synthetic data: the same easy tasks written in every format llmtune reads, plus held-out eval files.

The quickstart and the tests train on this, so nothing needs downloading. Output is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from llmtune.data.synth_cls import cls_rows
from llmtune.data.synth_mc import DEV_PER_SUBJECT, SUBJECTS, mc_rows
from llmtune.data.synth_tasks import SYSTEM_PROMPTS, TASKS, TOPICS, WORDS, Example, check_answer
from llmtune.errors import UserError

__all__ = [
    "TASKS",
    "Example",
    "check_answer",
    "count_rows",
    "held_out_examples",
    "make_examples",
    "text_corpus",
    "write_builtin_data",
]


def make_examples(n: int, seed: int, tasks: Sequence[str] | None = None) -> list[Example]:
    """`n` examples cycling through `tasks` (all by default), the same list for the same seed."""
    names = _task_names(tasks)
    rng = random.Random(seed)
    return [TASKS[names[i % len(names)]](rng) for i in range(n)]


def held_out_examples(n: int, seed: int, exclude: Iterable[str], tasks: Sequence[str] | None = None) -> list[Example]:
    """`n` examples whose prompts are all distinct and none in `exclude`; tasks whose prompts run out are skipped."""
    names = _task_names(tasks)
    rng = random.Random(f"held-out:{seed}")
    seen, out, misses, i = set(exclude), [], 0, 0
    while len(out) < n and misses < len(names):
        generate = TASKS[names[i % len(names)]]
        i += 1
        fresh = next((ex for ex in (generate(rng) for _ in range(50)) if ex.prompt not in seen), None)
        misses = 0 if fresh else misses + 1
        if fresh:
            seen.add(fresh.prompt)
            out.append(fresh)
    if len(out) < n:
        raise UserError(
            f"Only {len(out)} held-out questions differ from the training ones, fewer than the {n} asked for; "
            "lower --eval (or --train)."
        )
    return out


def text_corpus(n_docs: int, seed: int) -> list[str]:
    """Plain-text documents of a few sentences each: facts in words and worked questions, one task per document.

    Every fourth document describes one word of the word list (length, letters, reversed, capitals), so 320
    documents spell out every word form the tasks use; the corpus pretrains a tiny model and trains its tokenizer.
    """
    names = list(TASKS)
    rng = random.Random(f"text:{seed}")
    words = rng.sample(WORDS, len(WORDS))
    docs = []
    for i in range(n_docs):
        if i % 4 == 3:
            docs.append(_word_card(words[(i // 4) % len(words)]))
            continue
        name = names[(i - i // 4) % len(names)]
        sentences = [TOPICS[name]] if rng.random() < 0.5 else []
        for _ in range(rng.randint(3, 5)):
            ex = TASKS[name](rng)
            sentences.append(ex.explanation if rng.random() < 0.6 else ex.as_sentence())
        docs.append(" ".join(sentences))
    return docs


def _word_card(word: str) -> str:
    return (
        f"The word {word} has {len(word)} letters: {', '.join(word)}. "
        f"Written backwards it is {word[::-1]}, and in capital letters it is {word.upper()}."
    )


def write_builtin_data(out_dir: Path, n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write every training and eval file into `out_dir` (created if missing); returns file name -> path."""
    if n_train < 1 or n_eval < 1:
        raise UserError(f"Need at least one training and one eval row (got train={n_train}, eval={n_eval}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = make_examples(n_train, seed)
    evals = held_out_examples(n_eval, seed, {ex.prompt for ex in train})
    convs = _conversations(train, random.Random(f"conversations:{seed}"))
    alpaca_rng, chat_rng, ranked_rng = (random.Random(f"{name}:{seed}") for name in ("alpaca", "chat", "ranked"))
    docs = text_corpus(n_train, seed)
    cls_train = cls_rows(n_train, seed, "train")
    files: dict[str, list[dict]] = {
        "sft_alpaca": [_alpaca_row(ex, train, alpaca_rng) for ex in train],
        "sft_messages": [{"messages": conv} for conv in convs],
        "sft_sharegpt": [{"conversations": _sharegpt(conv)} for conv in convs],
        "preference": [{"prompt": ex.prompt, "chosen": ex.answer, "rejected": ex.wrong} for ex in train],
        "preference_chat": [_preference_chat_row(ex, chat_rng) for ex in train],
        "ranked": [_ranked_row(ex, train, ranked_rng) for ex in train],
        "text": [{"text": doc} for doc in docs],
        "cls": cls_train,
        "eval_messages": [{"messages": _turn(ex), "answer": ex.answer} for ex in evals],
        "eval_alpaca": [{"instruction": ex.instruction, "input": ex.input, "output": ex.answer} for ex in evals],
        "eval_preference": [{"prompt": ex.prompt, "chosen": ex.answer, "rejected": ex.wrong} for ex in evals],
        "eval_text": [{"text": doc} for doc in text_corpus(n_eval, seed + 1_000_003)],
        "eval_mc": mc_rows(n_eval, seed, "test"),
        "dev_mc": mc_rows(DEV_PER_SUBJECT * len(SUBJECTS), seed, "dev"),
        "eval_cls": cls_rows(n_eval, seed, "eval", exclude={row["text"] for row in cls_train}),
    }
    paths = {f"{name}.jsonl": _write_jsonl(out_dir / f"{name}.jsonl", rows) for name, rows in files.items()}
    paths["text.txt"] = out_dir / "text.txt"
    paths["text.txt"].write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return paths


def count_rows(path: Path) -> int:
    """Rows in a written file: lines of a .jsonl, blank-line-separated documents of a .txt."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return sum(1 for doc in text.split("\n\n") if doc.strip())
    return sum(1 for line in text.splitlines() if line.strip())


def _task_names(tasks: Sequence[str] | None) -> list[str]:
    names = list(tasks) if tasks is not None else list(TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise UserError(f"Unknown synthetic task(s) {unknown or names}; choose from: {', '.join(TASKS)}.")
    return names


def _turn(ex: Example) -> list[dict[str, str]]:
    return [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.answer}]


def _conversations(train: list[Example], rng: random.Random) -> list[list[dict[str, str]]]:
    """One conversation per example, ending with it; a quarter have 1-2 earlier exchanges, a third a system prompt."""
    convs = []
    for ex in train:
        system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
        earlier = rng.sample(train, rng.randint(1, 2)) if rng.random() < 0.25 and len(train) > 2 else []
        convs.append(system + [msg for prev in earlier for msg in _turn(prev)] + _turn(ex))
    return convs


def _sharegpt(conv: list[dict[str, str]]) -> list[dict[str, str]]:
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": speaker[msg["role"]], "value": msg["content"]} for msg in conv]


def _alpaca_row(ex: Example, train: list[Example], rng: random.Random) -> dict:
    row: dict = {"instruction": ex.instruction, "input": ex.input, "output": ex.answer}
    if rng.random() < 0.2:
        row["system"] = rng.choice(SYSTEM_PROMPTS)
    if rng.random() < 0.1 and len(train) > 2:
        row["history"] = [[prev.prompt, prev.answer] for prev in rng.sample(train, rng.randint(1, 2))]
    return row


def _preference_chat_row(ex: Example, rng: random.Random) -> dict:
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
    return {
        "prompt": system + [{"role": "user", "content": ex.prompt}],
        "chosen": [{"role": "assistant", "content": ex.answer}],
        "rejected": [{"role": "assistant", "content": ex.wrong}],
    }


def _ranked_row(ex: Example, train: list[Example], rng: random.Random) -> dict:
    """The answer (score 1), the near miss (0.5) and an answer to some other question (0), in shuffled order."""
    others = [o.answer for o in rng.sample(train, min(len(train), 20)) if o.answer not in (ex.answer, ex.wrong)]
    scored = [(ex.answer, 1.0), (ex.wrong, 0.5), (others[0] if others else "I do not know.", 0.0)]
    rng.shuffle(scored)
    return {"prompt": ex.prompt, "responses": [r for r, _ in scored], "scores": [s for _, s in scored]}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
