"""Rows of one kind read as another: chat and preference rows as RL prompts (with a reference answer), preference
pairs as KTO's unpaired rows (chosen desirable, rejected undesirable).

Applied to the canonical rows of one raw row at a time, so a ranked row's pairs, which repeat its prompt and best
answer, give that prompt and that desirable row once.
"""

from __future__ import annotations

import json

from llmtune.data.formats import CHAT, KTO, PREFERENCE, PROMPT, Messages, Row


def _text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages)


def _chat_as_prompt(row: Row) -> list[Row]:
    """The conversation up to its last user turn is the prompt; the last answer is the reference."""
    messages = row["messages"]
    return [{"prompt": messages[:-1], "answer": messages[-1]["content"]}]


def _pair_as_prompt(row: Row) -> list[Row]:
    return [{"prompt": row["prompt"], "answer": _text(row["chosen"])}]


def _pair_as_kto(row: Row) -> list[Row]:
    return [
        {"prompt": row["prompt"], "completion": row["chosen"], "label": True},
        {"prompt": row["prompt"], "completion": row["rejected"], "label": False},
    ]


RESHAPERS = {
    (CHAT, PROMPT): _chat_as_prompt,
    (PREFERENCE, PROMPT): _pair_as_prompt,
    (PREFERENCE, KTO): _pair_as_kto,
}


def reshape(rows: list[Row], from_kind: str, to_kind: str) -> list[Row]:
    """The rows of one raw row as `to_kind` rows, duplicates dropped (unchanged when no reshaper applies)."""
    convert = RESHAPERS.get((from_kind, to_kind))
    if convert is None:
        return rows
    out, seen = [], set()
    for row in rows:
        for new in convert(row):
            key = json.dumps(new, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(new)
    return out
