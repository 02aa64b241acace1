"""The rewards of rl.rewards as TRL reward functions: reward models, reference-answer matches, a format regex, a
length band, and user functions (only with rl.allow_code).

`check_rewards` runs before any model is loaded (a missing file, a reward model that is not a classifier, a match
reward without reference answers all stop the run with one message); `build_rewards` then loads the scorers.
Each function takes TRL's keywords (prompts=, completions=, and the dataset's columns such as answer=) and returns
one float per completion, or None where it does not apply (TRL then ignores it for that row).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmtune.errors import UserError
from llmtune.schema import Recipe
from llmtune.schema.align import RewardSpec

RewardFn = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the assistant messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if isinstance(m.get("content"), str))


def normalize(text: str) -> str:
    """Case, runs of spaces, surrounding spaces and one trailing period do not count."""
    text = " ".join(text.casefold().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _named(fn: RewardFn, name: str) -> RewardFn:
    fn.__name__ = name
    return fn


def match_reward(how: str) -> RewardFn:
    def reward(completions: Sequence[Any], answer: Sequence[str | None] | None = None, **_: Any) -> list:
        answers = answer if answer is not None else [None] * len(completions)
        out: list[float | None] = []
        for completion, ref in zip(completions, answers, strict=True):
            if ref is None:
                out.append(None)
                continue
            got, want = normalize(completion_text(completion)), normalize(ref)
            out.append(float(got == want if how == "exact" else want in got))
        return out

    return reward


def regex_reward(pattern: str) -> RewardFn:
    compiled = re.compile(pattern)

    def reward(completions: Sequence[Any], **_: Any) -> list:
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    return reward


def length_reward(band: tuple[int, int]) -> RewardFn:
    low, high = band
    width = max(high - low, 1)

    def reward(completions: Sequence[Any], **_: Any) -> list:
        lengths = [len(completion_text(c)) for c in completions]
        return [max(0.0, 1.0 - max(low - n, n - high, 0) / width) for n in lengths]

    return reward


def _function_file(spec: str) -> tuple[Path, str]:
    path, name = spec.rsplit(":", 1)
    return Path(path).expanduser(), name


def load_function(spec: str) -> RewardFn:
    """Import `path/to/file.py:name` (rl.allow_code was checked by the schema) and return the function."""
    path, name = _function_file(spec)
    module_spec = importlib.util.spec_from_file_location(f"llmtune_reward_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"rl.rewards: function {spec}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"rl.rewards: function {spec}: {path} defines no function {name!r}")
    return fn


def scorer_reward(path: str, endpoint: str | None) -> RewardFn:
    """A reward model as a reward function: prompt + completion scored as `llmtune rm` trained it (chat template)."""
    from llmtune.infer.score import load_scorer, score_answers

    loaded = load_scorer(path, endpoint=endpoint)

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list:
        chats = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        answers = [completion_text(c) for c in completions]
        return score_answers(loaded.model, loaded.tokenizer, chats, answers).tolist()

    return reward


def check_rewards(recipe: Recipe, rows: Sequence[dict]) -> None:
    """Every reward can run: files exist, reward models are classifiers, match rewards have answers to match."""
    from llmtune.infer.score import check_scorer

    names = [spec.label for spec in recipe.rl.rewards]
    if len(set(names)) != len(names):
        raise UserError(f"rl.rewards: two rewards share a name ({', '.join(names)}); give them distinct `name`s")
    for i, spec in enumerate(recipe.rl.rewards):
        where = f"rl.rewards[{i}]"
        if spec.reward_model is not None:
            check_scorer(spec.reward_model, recipe.hub.endpoint, what=f"{where}.reward_model")
        elif spec.function is not None:
            path, _ = _function_file(spec.function)
            if not path.is_file():
                raise UserError(f"{where}.function: {path} does not exist (write it as path/to/file.py:function)")
        elif spec.match is not None and not any(row.get("answer") for row in rows):
            raise UserError(
                f"{where}.match: no training row has a reference answer; use prompt rows with an `answer`, "
                "chat rows (the last answer), or preference rows (the chosen answer)"
            )


def _reward(spec: RewardSpec, endpoint: str | None) -> RewardFn:
    if spec.reward_model is not None:
        return scorer_reward(spec.reward_model, endpoint)
    if spec.match is not None:
        return match_reward(spec.match)
    if spec.regex is not None:
        return regex_reward(spec.regex)
    if spec.length is not None:
        return length_reward(spec.length)
    return load_function(str(spec.function))


def build_rewards(recipe: Recipe) -> tuple[list[RewardFn], list[float]]:
    """The reward functions (each named by its label, for TRL's rewards/NAME/mean) and their weights."""
    fns = [_named(_reward(spec, recipe.hub.endpoint), spec.label) for spec in recipe.rl.rewards]
    return fns, [spec.weight for spec in recipe.rl.rewards]
