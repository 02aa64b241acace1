"""Row formats -> one canonical shape, chosen by name from a registry (LLaMA-Factory's idea, without the if/elif).

Canonical shapes:
  chat        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
              an optional system message first, then user/assistant alternating, starting with user, ending with
              assistant.
  text        {"text": str}
  preference  {"prompt": [messages ending with a user turn], "chosen": [assistant messages], "rejected": [...]}
              (TRL's conversational preference format).
  prompt      {"prompt": [messages ending with a user turn], "answer": str | None} (online RL: grpo, rloo)
  kto         {"prompt": [...], "completion": [assistant messages], "label": bool} (TRL's unpaired format)
  cls         {"text": str, "label": str} (an integer label becomes its decimal string).

Role names: `messages` rows use system/user/assistant (developer is read as system); `sharegpt` rows map
human/user -> user, gpt/assistant/bot/model -> assistant, system -> system. `ranked` rows become one pair per
response that scores below the best one (best vs each worse; ties with the best give no pair), as UltraFeedback is
binarized: all ordered pairs would over-weight prompts with many answers and teach bad-vs-worse distinctions.
A converter returns a list of canonical rows (ranked rows give several) or raises RowError with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
IGNORE = -100
"""The label of a token the loss skips (prompt, padding): torch's and transformers' ignore_index."""
Messages = list[dict[str, str]]

CHAT, TEXT, PREFERENCE, PROMPT, KTO, CLS = "chat", "text", "preference", "prompt", "kto", "cls"
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


class RowError(ValueError):
    """One malformed row; the reader adds the file and row number to the message."""


def apply_columns(row: Row, columns: dict[str, str]) -> Row:
    """Rename the file's columns to ours (`columns` maps our name -> the file's name)."""
    if not columns:
        return row
    out = {key: value for key, value in row.items() if key not in columns.values()}
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowError(f"missing column {theirs!r} (mapped to {ours!r} in columns)")
        out[ours] = row[theirs]
    return out


def _string(value: Any, what: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} is not a string (got {type(value).__name__})")
    if not empty_ok and not value.strip():
        raise RowError(f"{what} is empty")
    return value


def _field(row: Row, name: str) -> Any:
    if name not in row or row[name] is None:
        raise RowError(f"missing column {name!r} (columns: {', '.join(sorted(row)) or 'none'})")
    return row[name]


def _message(raw: Any, index: int, role_key: str, content_key: str, roles: dict[str, str]) -> dict[str, str]:
    where = f"message {index + 1}"
    if not isinstance(raw, dict):
        raise RowError(f"{where} is not an object (got {type(raw).__name__})")
    if role_key not in raw:
        raise RowError(f"{where} has no {role_key!r} key")
    role = raw[role_key]
    if role not in roles:
        raise RowError(f"{where} has unknown role {role!r} (allowed: {', '.join(roles)})")
    if content_key not in raw:
        raise RowError(f"{where} has no {content_key!r} key")
    content = _string(raw[content_key], f"content of {where} ({role})", empty_ok=True)
    return {"role": roles[role], "content": content}


def message_list(value: Any, what: str, role_key: str, content_key: str, roles: dict[str, str]) -> Messages:
    if not isinstance(value, list):
        raise RowError(f"{what} is not a list of messages (got {type(value).__name__})")
    if not value:
        raise RowError(f"{what} is empty")
    return [_message(m, i, role_key, content_key, roles) for i, m in enumerate(value)]


def check_turns(messages: Messages, *, end: str = "assistant") -> Messages:
    """Optional system first, then user/assistant alternating from user, ending with `end`; no empty answers."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RowError("the conversation has no user or assistant message")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            position = i + 1 + (len(messages) - len(body))
            what = "a system message may only come first" if msg["role"] == "system" else "roles do not alternate"
            raise RowError(f"{what}: message {position} is {msg['role']!r}, expected {expected!r}")
        if expected == "assistant" and not msg["content"].strip():
            raise RowError(f"assistant turn {i // 2 + 1} is empty")
    if body[-1]["role"] != end:
        raise RowError(f"the conversation ends with a {body[-1]['role']!r} message; the last one must be {end!r}")
    return messages


def _alpaca(row: Row) -> list[Row]:
    instruction = _string(_field(row, "instruction"), "instruction")
    extra = row.get("input")
    prompt = f"{instruction}\n\n{_string(extra, 'input')}" if extra is not None and str(extra).strip() else instruction
    messages: Messages = []
    if row.get("system") is not None and str(row["system"]).strip():
        messages.append({"role": "system", "content": _string(row["system"], "system")})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError(f"history is not a list of [question, answer] pairs (got {type(history).__name__})")
    for n, pair in enumerate(history, start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history item {n} is not a [question, answer] pair")
        messages.append({"role": "user", "content": _string(pair[0], f"history item {n} question", empty_ok=True)})
        messages.append({"role": "assistant", "content": _string(pair[1], f"history item {n} answer")})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": _string(_field(row, "output"), "output")})
    return [{"messages": check_turns(messages)}]


def _sharegpt(row: Row) -> list[Row]:
    messages = message_list(_field(row, "conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return [{"messages": check_turns(messages)}]


def _messages(row: Row) -> list[Row]:
    messages = message_list(_field(row, "messages"), "messages", "role", "content", MESSAGE_ROLES)
    return [{"messages": check_turns(messages)}]


def _text(row: Row) -> list[Row]:
    return [{"text": _string(_field(row, "text"), "text")}]


def _prompt(value: Any) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": _string(value, "prompt")}]
    return check_turns(message_list(value, "prompt", "role", "content", MESSAGE_ROLES), end="user")


def _completion(value: Any, what: str) -> Messages:
    if isinstance(value, str):
        return [{"role": "assistant", "content": _string(value, what)}]
    messages = message_list(value, what, "role", "content", MESSAGE_ROLES)
    if messages[0]["role"] != "assistant":
        raise RowError(f"{what} must start with an assistant message, not {messages[0]['role']!r}")
    if not messages[-1]["content"].strip():
        raise RowError(f"{what} ends with an empty assistant message")
    return messages


def _pair(prompt: Messages, chosen: Messages, rejected: Messages) -> Row:
    if chosen == rejected:
        raise RowError("chosen and rejected are the same; a pair must differ")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _split_implicit(chosen: Any, rejected: Any) -> Row:
    """Full conversations sharing a prompt: split them at their longest common message prefix."""
    full_c = message_list(chosen, "chosen", "role", "content", MESSAGE_ROLES)
    full_r = message_list(rejected, "rejected", "role", "content", MESSAGE_ROLES)
    if full_c == full_r:
        raise RowError("chosen and rejected are the same; a pair must differ")
    shared = 0
    while shared < min(len(full_c), len(full_r)) and full_c[shared] == full_r[shared]:
        shared += 1
    if shared == 0:
        raise RowError("chosen and rejected share no prompt (their first messages differ); add a prompt column")
    prompt = check_turns(full_c[:shared], end="user")
    return _pair(prompt, _completion(full_c[shared:], "chosen"), _completion(full_r[shared:], "rejected"))


def _preference(row: Row) -> list[Row]:
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    if row.get("prompt") is None:
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise RowError("missing column 'prompt' (needed when chosen and rejected are strings)")
        return [_split_implicit(chosen, rejected)]
    prompt = _prompt(row["prompt"])
    return [_pair(prompt, _completion(chosen, "chosen"), _completion(rejected, "rejected"))]


def _ranked(row: Row) -> list[Row]:
    prompt = _prompt(_field(row, "prompt"))
    responses, scores = _field(row, "responses"), _field(row, "scores")
    if not isinstance(responses, list) or not isinstance(scores, list):
        raise RowError("responses and scores must be lists")
    if len(responses) != len(scores):
        raise RowError(f"{len(responses)} responses but {len(scores)} scores; they must pair up")
    if len(responses) < 2:
        raise RowError("a ranked row needs at least two responses")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        raise RowError("scores must all be numbers")
    answers = [_completion(r, f"response {i + 1}") for i, r in enumerate(responses)]
    best = max(range(len(scores)), key=lambda i: scores[i])
    worse = [i for i in range(len(scores)) if scores[i] < scores[best]]
    if not worse:
        raise RowError("all responses have the same score; there is no preference to learn")
    return [_pair(prompt, answers[best], answers[i]) for i in worse]


def _prompt_row(row: Row) -> list[Row]:
    answer = row.get("answer")
    return [{"prompt": _prompt(_field(row, "prompt")), "answer": None if answer is None else _string(answer, "answer")}]


def _kto(row: Row) -> list[Row]:
    label = _field(row, "label")
    if not isinstance(label, bool):
        raise RowError(f"label must be true (desirable) or false (undesirable), not {label!r}")
    completion = _completion(_field(row, "completion"), "completion")
    return [{"prompt": _prompt(_field(row, "prompt")), "completion": completion, "label": label}]


def _cls(row: Row) -> list[Row]:
    label = _field(row, "label")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise RowError(f"label must be a string or an integer, not {type(label).__name__} ({label!r})")
    if not str(label).strip():
        raise RowError("label is empty")
    return [{"text": _string(_field(row, "text"), "text"), "label": str(label).strip()}]


CONVERTERS: dict[str, Callable[[Row], list[Row]]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "text": _text,
    "preference": _preference,
    "ranked": _ranked,
    "prompt": _prompt_row,
    "kto": _kto,
    "cls": _cls,
}
KIND_OF_FORMAT = {
    "alpaca": CHAT,
    "sharegpt": CHAT,
    "messages": CHAT,
    "text": TEXT,
    "preference": PREFERENCE,
    "ranked": PREFERENCE,
    "prompt": PROMPT,
    "kto": KTO,
    "cls": CLS,
}
# Checked in order: the first format whose columns are all present wins.
DETECT_BY_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ranked", ("responses", "scores")),
    ("preference", ("chosen", "rejected")),
    ("kto", ("prompt", "completion", "label")),
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("cls", ("text", "label")),
    ("text", ("text",)),
    ("prompt", ("prompt",)),
)


def detect_format(row: Row) -> str:
    """The format a row's columns say it is in; RowError naming the columns when none fits."""
    for name, needed in DETECT_BY_COLUMNS:
        if all(col in row for col in needed):
            return name
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in DETECT_BY_COLUMNS)
    raise RowError(
        f"cannot tell the format from the columns ({', '.join(sorted(row)) or 'none'}); expected one of "
        f"[{expected}]: set format (and columns to map names) on this source"
    )


def convert(fmt: str, row: Any, columns: dict[str, str] | None = None) -> list[Row]:
    """One raw row in `fmt` -> its canonical rows (column mapping applied first)."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object with named fields, not {type(row).__name__}")
    return CONVERTERS[fmt](apply_columns(row, columns or {}))
