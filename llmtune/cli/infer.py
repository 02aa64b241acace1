"""Commands that run a trained model: `llmtune eval`, `generate`, `chat`, `bon`, `serve`, `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmtune.cli.options import (
    AdapterOpt,
    BatchOpt,
    BeamsOpt,
    DtypeOpt,
    EndpointOpt,
    MaxNewOpt,
    ModelOpt,
    RepOpt,
    SeedOpt,
    SetOpt,
    TempOpt,
    TopKOpt,
    TopPOpt,
    model_args,
)
from llmtune.errors import UserError

ShotsOpt = Annotated[
    Optional[int], typer.Option("--shots", metavar="K", min=0, help="Answered examples before each exam question.")
]
McScoreOpt = Annotated[
    str, typer.Option("--mc-score", metavar="letter|text", help="Score the answer letter, or each choice's text.")
]
HarnessOpt = Annotated[
    Optional[str], typer.Option("--harness", metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated.")
]


def bon(
    model: Annotated[str, typer.Option("--model", metavar="M", help="Policy: model dir, Hub id or run dir.")],
    reward: Annotated[str, typer.Option("--reward", metavar="RM", help="Reward model: an `llmtune rm` output dir.")],
    prompts: Annotated[
        Path, typer.Option("--prompts", metavar="FILE", help="Prompts: .jsonl/.json/.csv/.parquet rows or a .txt.")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Writes best.jsonl, pairs.jsonl, scored.jsonl.")],
    n: Annotated[int, typer.Option("--n", metavar="N", help="Answers sampled per prompt.")] = 4,
    adapter: Annotated[Optional[str], typer.Option("--adapter", metavar="DIR", help="Adapter on --model.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", help="Sampling temperature.")] = 0.8,
    top_p: Annotated[Optional[float], typer.Option("--top-p", metavar="P", help="Nucleus sampling.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="Answer length cap.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="B", help="Prompts per batch.")] = 8,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Sampling seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --out.")] = False,
) -> None:
    """Best-of-N: sample N answers per prompt, score them with a reward model, write SFT and preference data."""
    from llmtune import console
    from llmtune.jobs.bon import BonOptions, best_of_n

    options = BonOptions(
        model, reward, prompts, out, adapter=adapter, n=n, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, overwrite=overwrite,
    )  # fmt: skip
    result = best_of_n(options)
    console.stdout().print(
        f"{result.prompts} prompts: {result.best} best answers, {result.pairs} pairs, {result.skipped} skipped; "
        f"wrote {', '.join(str(p) for p in result.files.values())}"
    )


def eval_cmd(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    data: Annotated[Optional[str], typer.Option("--data", metavar="FILE", help="Eval data file (any format).")] = None,
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", metavar="R.yaml", help="Evaluate on this recipe's eval split.")
    ] = None,
    set_: SetOpt = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", metavar="FMT", help="Row format of --data; mc: exam questions.")
    ] = None,
    compare: Annotated[
        Optional[list[str]], typer.Option("--compare", metavar="SPEC", help="Another model/run/adapter (repeatable).")
    ] = None,
    reference: Annotated[
        Optional[str], typer.Option("--reference", metavar="M", help="Reference model for the implicit DPO accuracy.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the numbers as JSON.")] = None,
    max_samples: Annotated[
        Optional[int], typer.Option("--max-samples", metavar="N", min=1, help="Evaluate the first N rows.")
    ] = None,
    batch_size: BatchOpt = 8,
    context: Annotated[
        Optional[int],
        typer.Option("--context", metavar="N", min=2, help="Text perplexity window (default: model max, <= 2048)."),
    ] = None,
    generate: Annotated[bool, typer.Option(help="Generate answers for chat data (exact match, ROUGE-L).")] = True,
    max_new_tokens: MaxNewOpt = 64,
    show: Annotated[
        int, typer.Option("--show", metavar="N", min=0, help="Print N prompts with the expected and generated answers.")
    ] = 0,
    reward: Annotated[
        Optional[str], typer.Option("--reward", metavar="RM", help="Score the generated answers with a reward model.")
    ] = None,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
    shots: ShotsOpt = None,
    dev: Annotated[
        Optional[str], typer.Option("--dev", metavar="FILE", help="Exam examples for --shots (per subject).")
    ] = None,
    mc_score: McScoreOpt = "letter",
    split: Annotated[str, typer.Option("--split", metavar="NAME", help="Split of a dataset folder/Hub id.")] = "test",
    subset: Annotated[Optional[str], typer.Option("--subset", metavar="NAME", help="Its subset (config).")] = None,
    harness: HarnessOpt = None,
    harness_include: Annotated[
        Optional[str], typer.Option("--harness-include", metavar="DIR", help="More lm-eval task YAMLs here.")
    ] = None,
) -> None:
    """Perplexity, bits per byte, generation, reward, DPO, exam and classifier metrics (and lm-eval), in one table."""
    from llmtune import console
    from llmtune.eval import job, output
    from llmtune.infer.generate import DecodeOptions

    if mc_score not in ("letter", "text"):
        raise UserError(f"--mc-score {mc_score!r}: choose letter (the answer letter) or text (each choice's text)")
    rows, resolved = _eval_rows(data, recipe, set_, fmt, max_samples, endpoint, shots, dev, split, subset, harness)
    specs = job.plan_specs(*model_args(model, adapter), list(compare or []), resolved)
    decode = DecodeOptions(max_new_tokens=max_new_tokens)
    options = job.EvalOptions(batch_size, context, generate, decode, dtype, endpoint, mc_score)
    if reward and not (rows.kind == "chat" and generate):
        raise UserError("--reward scores generated answers: give chat data (with answers to generate) and --generate")
    options.reward = reward
    if harness:
        from llmtune.eval.harness import parse_tasks

        options.harness, options.harness_include, options.shots = parse_tasks(harness), harness_include, shots
    results = job.run_eval(specs, rows, options, reference)
    console.stdout().print(output.results_table(results, f"{rows.label} ({len(rows.rows)} {rows.kind} rows)"))
    if show and rows.kind == "chat":
        output.show_examples(rows, results, show)
    if out is not None:
        output.write_results(out, rows, results)
        console.info(f"wrote {out}", markup=False)


def _eval_rows(data, recipe, set_, fmt, max_samples, endpoint, shots, dev, split, subset, harness) -> tuple:
    """The eval data of `llmtune eval`: a file (exam questions when --format mc or its columns say so), a recipe's
    eval split, or none when only --harness tasks run; and the recipe, when one was given."""
    from llmtune.eval import job as job
    from llmtune.recipe import load_recipe

    if data is not None and recipe is not None or (data is None and recipe is None and not harness):
        raise UserError("give exactly one of --data FILE or --recipe R.yaml (its eval split), or --harness TASKS")
    resolved = load_recipe(recipe, set_) if recipe else None
    if resolved is not None:
        return job.recipe_eval_data(resolved, max_samples), resolved
    if data is None:
        return job.EvalData("harness", [], "lm-eval tasks"), None
    if fmt == "mc" or (fmt is None and job.is_exam_file(data, endpoint, split, subset)):
        rows = job.read_exam(data, dev=dev, shots=shots or 0, split=split, subset=subset, max_samples=max_samples,
                             endpoint=endpoint)  # fmt: skip
        return rows, None
    return job.read_eval_file(data, fmt, max_samples, endpoint), None


def generate_cmd(
    prompt: Annotated[
        Optional[list[str]], typer.Argument(metavar="[PROMPT]...", help="Prompts.", show_default=False)
    ] = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", metavar="FILE", help="Prompt file: .txt lines or .jsonl rows.")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain-text prompts, no chat template.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write JSONL results here.")] = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    num_beams: BeamsOpt = 1,
    repetition_penalty: RepOpt = 1.0,
    num_return_sequences: Annotated[int, typer.Option("--num-return-sequences", metavar="N", min=1)] = 1,
    seed: SeedOpt = None,
    batch_size: BatchOpt = 16,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Generate completions for prompts (arguments or a file), batched, greedy / beam search / sampling."""
    from llmtune.infer.generate import DecodeOptions, generate, write_generations
    from llmtune.infer.load import load_for_inference
    from llmtune.infer.prompts import read_prompts

    texts = list(prompt or []) + (read_prompts(prompts) if prompts else [])
    if not texts:
        raise UserError("no prompts: pass them as arguments or with --prompts FILE")
    options = DecodeOptions(max_new_tokens, temperature, top_k, top_p, num_beams, repetition_penalty,
                            num_return_sequences, seed)  # fmt: skip
    options.check()
    loaded = load_for_inference(*model_args(model, adapter), dtype=dtype, endpoint=endpoint)
    outputs = generate(loaded.model, loaded.tokenizer, texts, options, chat=not raw, batch_size=batch_size)
    write_generations(texts, outputs, out)


def chat_cmd(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    system: Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="System message.")] = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    num_beams: BeamsOpt = 1,
    repetition_penalty: RepOpt = 1.0,
    seed: SeedOpt = None,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Talk to a model with its chat template, answers streamed; /reset starts over, /exit quits."""
    from llmtune.infer.chat import chat_loop
    from llmtune.infer.generate import DecodeOptions
    from llmtune.infer.load import load_for_inference

    options = DecodeOptions(max_new_tokens, temperature, top_k, top_p, num_beams, repetition_penalty, 1, seed)
    options.check()
    loaded = load_for_inference(*model_args(model, adapter), dtype=dtype, endpoint=endpoint)
    chat_loop(loaded.model, loaded.tokenizer, options, system=system)


def serve_cmd(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    port: Annotated[int, typer.Option("--port", metavar="P", min=1, max=65535, help="TCP port.")] = 8000,
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Listen address (0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
    name: Annotated[
        Optional[str], typer.Option("--name", metavar="NAME", help="Model name clients ask for (default: dir name).")
    ] = None,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Serve a model, run dir or adapter (merged) as an OpenAI-compatible chat-completions endpoint."""
    from llmtune.infer.serve import serve

    serve(*model_args(model, adapter), host=host, port=port, name=name, dtype=dtype, endpoint=endpoint)


def predict_cmd(
    data: Annotated[str, typer.Option("--data", metavar="FILE", help="Rows with a `text` column (or a .txt).")],
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write JSONL rows here.")] = None,
    max_length: Annotated[
        Optional[int], typer.Option("--max-length", metavar="N", min=1, help="Tokens per text (default: as trained).")
    ] = None,
    max_samples: Annotated[
        Optional[int], typer.Option("--max-samples", metavar="N", min=1, help="Classify the first N rows.")
    ] = None,
    batch_size: BatchOpt = 16,
    dtype: DtypeOpt = "auto",
    endpoint: EndpointOpt = None,
) -> None:
    """Classify texts with an `llmtune cls` run: a label and its probability per row (a table, or JSONL with --out)."""
    from llmtune import console
    from llmtune.eval import classify
    from llmtune.infer.load import load_for_inference

    rows = classify.read_texts(data, endpoint, max_samples)
    loaded = load_for_inference(*model_args(model, adapter), dtype=dtype, endpoint=endpoint)
    length = classify.max_length(loaded, max_length)
    predictions = classify.predict_rows(loaded, rows, length, batch_size)
    if out is None:
        console.stdout().print(classify.predictions_table(predictions, f"{loaded.label} on {data}"))
        return
    classify.write_predictions(predictions, out)
    console.info(f"wrote {len(predictions)} rows to {out}", markup=False)


COMMANDS = {
    "bon": bon,
    "eval": eval_cmd,
    "generate": generate_cmd,
    "chat": chat_cmd,
    "serve": serve_cmd,
    "predict": predict_cmd,
}
