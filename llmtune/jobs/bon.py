"""Best-of-N: sample N answers per prompt, score them with a reward model, keep the best and the best-vs-worst pair.

`llmtune bon` writes three files into its output directory:
  best.jsonl    {"messages": prompt + [best answer], "reward"}: SFT data (format messages) for rejection sampling
  pairs.jsonl   {"prompt", "chosen": [best], "rejected": [worst], "chosen_reward", "rejected_reward"}: DPO/RM data
                (format preference); a prompt whose answers all score the same (or say the same) gives no pair
  scored.jsonl  {"prompt", "responses", "scores"}: every sample with its reward (format ranked), to inspect or re-rank
Empty answers are never picked; a prompt with no non-empty answer is skipped and counted.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmtune import console
from llmtune.data.formats import Messages
from llmtune.errors import UserError
from llmtune.infer.prompts import as_messages, read_prompts
from llmtune.outdir import refuse_nonempty

FILES = ("best.jsonl", "pairs.jsonl", "scored.jsonl")


@dataclass(frozen=True)
class BonOptions:
    """What `llmtune bon` takes: the policy, the reward model, the prompts, the sampling and the output dir."""

    model: str
    reward: str
    prompts: Path
    out: Path
    adapter: str | None = None
    n: int = 4
    temperature: float = 0.8
    top_p: float | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    seed: int = 0
    overwrite: bool = False

    def check(self) -> None:
        if self.n < 2:
            raise UserError(f"--n must be at least 2 to choose between answers (got {self.n})")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be above 0: best-of-N samples its answers (got {self.temperature})")
        refuse_nonempty(self.out, self.overwrite, "--out")


@dataclass
class BonResult:
    prompts: int
    best: int
    pairs: int
    skipped: int
    files: dict[str, Path]


def pick(answers: Sequence[str], scores: Sequence[float]) -> tuple[int | None, int | None]:
    """(best, worst) indices: best is the top-scoring non-empty answer; worst the lowest-scoring one that scores
    below it and says something else (None when there is none)."""
    valid = [i for i, a in enumerate(answers) if a.strip()]
    if not valid:
        return None, None
    best = max(valid, key=lambda i: scores[i])
    worse = [i for i in valid if scores[i] < scores[best] and answers[i].strip() != answers[best].strip()]
    return best, (min(worse, key=lambda i: scores[i]) if worse else None)


def check_reward_dir(path: Path) -> None:
    """Refuse anything but an `llmtune rm` output (a SEQ_CLS adapter or a seq-cls model) before sampling starts."""
    for name, ok in (
        ("adapter_config.json", lambda cfg: cfg.get("task_type") == "SEQ_CLS"),
        (
            "config.json",
            lambda cfg: any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []),
        ),
    ):
        file = path / name
        if file.is_file():
            try:
                if ok(json.loads(file.read_text(encoding="utf-8"))):
                    return
            except ValueError:
                pass
            break
    raise UserError(
        f"--reward: {path} is not a reward model (the output dir of `llmtune rm`: a SEQ_CLS adapter or model)"
    )


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sample(options: BonOptions, prompts: list[Messages]) -> list[list[str]]:
    """N sampled answers per prompt from the policy (seeded)."""
    from llmtune.infer.generate import DecodeOptions, generate
    from llmtune.infer.load import load_for_inference

    policy = load_for_inference(options.model, options.adapter)
    decode = DecodeOptions(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        num_return_sequences=options.n,
        seed=options.seed,
    )
    answers = generate(policy.model, policy.tokenizer, prompts, decode, batch_size=options.batch_size)
    return [[a.strip() for a in group] for group in answers]


def best_of_n(options: BonOptions) -> BonResult:
    """Sample, score, pick and write (see the module doc); returns the counts and the files written."""
    from llmtune.infer.score import load_scorer, score

    options.check()
    check_reward_dir(Path(options.reward))
    prompts = [as_messages(p) for p in read_prompts(options.prompts)]
    answers = sample(options, prompts)
    _release_memory()  # the policy is gone once sampled: the reward model takes its place
    scorer = load_scorer(options.reward)
    convs = [
        [*p, {"role": "assistant", "content": a}] for p, group in zip(prompts, answers, strict=True) for a in group
    ]
    flat = score(scorer.model, scorer.tokenizer, convs, batch_size=options.batch_size).tolist()
    scores = [flat[i * options.n : (i + 1) * options.n] for i in range(len(prompts))]
    rows = select(prompts, answers, scores)
    skipped = len(prompts) - len(rows["best.jsonl"])
    if skipped:
        console.warn(f"{skipped} of {len(prompts)} prompts got only empty answers and are left out")
    files = _write(options.out, rows)
    return BonResult(len(prompts), len(rows["best.jsonl"]), len(rows["pairs.jsonl"]), skipped, files)


def select(prompts: list[Messages], answers: list[list[str]], scores: list[list[float]]) -> dict[str, list[dict]]:
    """The rows of each output file (see the module doc) from the sampled answers and their rewards."""
    rows: dict[str, list[dict]] = {name: [] for name in FILES}
    for prompt, group, group_scores in zip(prompts, answers, scores, strict=True):
        rows["scored.jsonl"].append({"prompt": prompt, "responses": group, "scores": group_scores})
        best, worst = pick(group, group_scores)
        if best is None:
            continue
        chosen = {"role": "assistant", "content": group[best]}
        rows["best.jsonl"].append({"messages": [*prompt, chosen], "reward": group_scores[best]})
        if worst is None:
            continue
        pair = {"prompt": prompt, "chosen": [chosen], "rejected": [{"role": "assistant", "content": group[worst]}]}
        rows["pairs.jsonl"].append(
            {**pair, "chosen_reward": group_scores[best], "rejected_reward": group_scores[worst]}
        )
    return rows


def _write(out: Path, rows: dict[str, list[dict]]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, items in rows.items():
        path = out / name
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        tmp.replace(path)
        files[name] = path
    return files
