"""Tokenizing 50k conversations: llmtune's `prepare` cold (read, template, assistant masks, Dataset, cache write)
against plain batched tokenizer calls (read the jsonl, apply_chat_template + tokenizer, 1,000 rows a call, no
masks), and `prepare` warm (the cache hit) against cold. One process, imports done first; variants interleaved.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import (
    WORK,
    emit,
    ensure_model,
    load_average,
    median,
    result_row,
    spread,
    spread_conversations,
    write_jsonl,
)

WARM_GOAL = 0.05


def plain_batched(path: Path, tokenizer: Any, batch: int = 1000) -> int:
    """What one writes by hand: rows from the jsonl, the chat template, then the tokenizer in batches. Tokens out."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokens = 0
    for start in range(0, len(rows), batch):
        conversations = [row["messages"] for row in rows[start : start + batch]]
        texts = tokenizer.apply_chat_template(conversations, tokenize=False)
        tokens += sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return tokens


def recipe_for(model: Path, data: Path, cache: Path, max_length: int) -> Any:
    from llmtune.schema import Recipe

    return Recipe.model_validate(
        {
            "stage": "sft",
            "model": {"name_or_path": str(model)},
            "data": {"train": [{"path": str(data)}], "max_length": max_length, "cache_dir": str(cache)},
            "output": {"dir": str(WORK / "runs" / "tokenize" / "unused")},
        }
    )


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="tokenization throughput and the tokenized-data cache")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-length", type=int, default=1024)
    args = p.parse_args(argv)

    from llmtune import console, modeling
    from llmtune.data.tokenize import prepare

    console.set_verbosity(console.QUIET)
    root = WORK / "runs" / "tokenize"
    data = root / f"spread-{args.rows}.jsonl"
    if not data.is_file():
        write_jsonl(data, spread_conversations(args.rows, seed=1))
    recipe = recipe_for(ensure_model("tiny"), data, root / "cache", args.max_length)
    tokenizer = modeling.load_tokenizer(recipe)
    print(f"tokenize: {args.rows:,} conversations ({data.stat().st_size / 2**20:.0f} MiB), {args.repeats} repeats; "
          f"load {load_average()}", flush=True)  # fmt: skip
    times: dict[str, list[float]] = {"plain": [], "cold": [], "warm": []}
    tokens = 0
    for rep in range(args.repeats):
        shutil.rmtree(root / "cache", ignore_errors=True)
        order = ("plain", "cold") if rep % 2 == 0 else ("cold", "plain")
        for variant in order:
            if variant == "plain":
                seconds, tokens = timed(plain_batched, data, tokenizer)
            else:
                seconds, cold = timed(prepare, recipe, tokenizer)
                assert not cold.stats["cached"]
            times[variant].append(seconds)
        seconds, warm = timed(prepare, recipe, tokenizer)
        assert warm.stats["cached"] and len(warm.train) == len(cold.train)
        times["warm"].append(seconds)
        print(f"  rep {rep + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
              + f"  (load {load_average()})", flush=True)  # fmt: skip
    plain, cold, warm = (median(times[k]) for k in ("plain", "cold", "warm"))
    cold_vs_plain = median([p / c for p, c in zip(times["plain"], times["cold"], strict=True)])  # paired per repeat
    warm_share = median([w / c for w, c in zip(times["warm"], times["cold"], strict=True)])
    print(f"  plain batched: {args.rows / plain:9,.0f} conversations/s {tokens / plain:11,.0f} tokens/s "
          f"({spread(times['plain'])} s)")  # fmt: skip
    print(f"  llmtune cold:  {args.rows / cold:9,.0f} conversations/s {tokens / cold:11,.0f} tokens/s "
          f"({spread(times['cold'])} s; masks, Dataset and cache write included)")  # fmt: skip
    print(f"  llmtune warm:  {warm:.3f} s ({spread(times['warm'])} s) = {100 * warm_share:.1f}% of cold")
    rows = [
        result_row(
            f"tokenize {args.rows // 1000}k conversations: llmtune cold / plain batched, speed",
            cold_vs_plain,
            "(info)",
            None,
            f"{args.rows / cold:,.0f} vs {args.rows / plain:,.0f} conversations/s",
        ),  # fmt: skip
        result_row(
            f"tokenize {args.rows // 1000}k conversations: warm cache time / cold",
            warm_share,
            f"<= {WARM_GOAL}",
            warm_share <= WARM_GOAL,
            f"{warm:.2f} s vs {cold:.2f} s",
        ),  # fmt: skip
    ]
    emit("tokenize_cache", rows, rows_tokenized=args.rows, tokens=tokens)


if __name__ == "__main__":
    main()
