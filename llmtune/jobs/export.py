"""`llmtune export`: merge a LoRA/DoRA adapter into its base and write a standalone model directory.

The output loads with plain transformers: safetensors weights (sharded above --max-shard-size), config, generation
config (stopping at the chat template's end-of-turn token too), tokenizer with its chat template, and a README.md
model card naming the base, the adapter, the recipe and the eval numbers. A QLoRA base is dequantized first (see
llmtune.infer.load). The directory is written beside --out and renamed into place, so a failure leaves nothing half
written. `--push REPO` uploads it through the configured endpoint with the token from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from llmtune import console
from llmtune.errors import UserError
from llmtune.infer.load import Loaded, load_for_inference, quiet_loading
from llmtune.outdir import move_into_place, refuse_nonempty

if TYPE_CHECKING:
    from llmtune.schema import Recipe


def check_shard_size(size: str) -> None:
    """Refuse a --max-shard-size transformers cannot parse before the model is loaded."""
    from huggingface_hub.serialization._base import parse_size_to_int  # what save_pretrained parses it with

    try:
        parse_size_to_int(size)
    except ValueError:
        raise UserError(f"--max-shard-size {size!r}: give a size in TB, GB, MB or KB, such as 5GB or 500MB") from None


def check_format(fmt: str, quant: str) -> None:
    """Refuse an unknown --format / --quant before the model is loaded."""
    from llmtune.errors import require_module

    if fmt not in ("safetensors", "gguf"):
        raise UserError(f"--format {fmt!r}: choose safetensors (a transformers model directory) or gguf")
    if fmt == "gguf":
        from llmtune.jobs.gguf import QUANTS

        if quant not in QUANTS:
            raise UserError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
        require_module("gguf", "export --format gguf")


def training_prompts(loaded: Loaded) -> list:
    """A few prompts to check that generation stops: the run's training data when its recipe names it."""
    from llmtune.infer.prompts import sample_prompts

    return sample_prompts(loaded.recipe)


def merged_model(loaded: Loaded) -> Any:
    """The base with the adapter folded into its weights (peft's merge_and_unload); a plain model as is."""
    if loaded.adapter is None:
        return loaded.model
    return loaded.model.merge_and_unload()


def _without_credentials(recipe: Recipe) -> Recipe:
    endpoint = recipe.hub.endpoint
    if not endpoint or "@" not in urlsplit(endpoint).netloc:
        return recipe
    parts = urlsplit(endpoint)
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return recipe.model_copy(update={"hub": recipe.hub.model_copy(update={"endpoint": clean})})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def eval_numbers(source: Path | None, extra: list[Path]) -> dict[str, dict[str, float]]:
    """Numbers for the card: training summary.json and eval JSONs (from `llmtune eval --out`) beside the source."""
    found: dict[str, dict[str, float]] = {}
    if source is not None:
        summary = _read_json(source / "summary.json") or {}
        numbers = {k: summary[k] for k in ("steps", "final_loss", "eval_loss") if summary.get(k) is not None}
        if numbers:
            found["training (summary.json)"] = numbers
        extra = sorted(source.glob("eval*.json")) + list(extra)
    for path in extra:
        data = _read_json(path)
        if data is None:
            raise UserError(f"--eval-json: {path} is not a JSON object written by `llmtune eval --out`")
        for model in data.get("models", []):
            metrics = {k: v for k, v in model.get("metrics", {}).items() if isinstance(v, (int, float))}
            found[f"{model.get('label', '?')} on {data.get('data', '?')}"] = metrics
    return found


def model_card(loaded: Loaded, name: str, numbers: dict[str, dict[str, float]]) -> str:
    """README.md: metadata header, what was merged into what, the recipe and the eval numbers (no secrets)."""
    from llmtune.recipe import dump_recipe

    recipe = loaded.recipe
    method = f"{recipe.stage} / {recipe.method.kind}" if recipe else "unknown (no recipe.yaml beside the adapter)"
    hub_base = not Path(loaded.base).expanduser().exists()
    lines = ["---", "library_name: transformers", "tags: [llmtune" + (f", {recipe.stage}" if recipe else "") + "]"]
    lines += [f"base_model: {loaded.base}"] if hub_base else []
    lines += ["---", "", f"# {name}", ""]
    what = f"the adapter `{loaded.adapter.name}` merged into" if loaded.adapter else "a re-save of"
    lines += [f"Exported by llmtune on {time.strftime('%Y-%m-%d')}: {what} `{loaded.base}`.", ""]
    lines += [f"- Base model: `{loaded.base}`", f"- Method: {method}"]
    if recipe is not None and recipe.method.kind in ("lora", "qlora"):
        lora = recipe.method.lora
        dora = ", DoRA" if lora.use_dora else ""
        lines.append(f"- Adapter: r={lora.r}, alpha={lora.alpha}, targets {lora.target_modules}{dora}")
    if recipe is not None and recipe.method.kind == "qlora":
        lines.append(f"- QLoRA: the 4-bit ({recipe.method.qlora.quant_type}) base was dequantized before merging")
    if numbers:
        lines += ["", "## Evaluation", "", "| run | metric | value |", "|---|---|---|"]
        for run, metrics in numbers.items():
            lines += [f"| {run} | {k} | {v:.6g} |" for k, v in metrics.items()]
    if recipe is not None:
        lines += ["", "## Training recipe", "", "```yaml", dump_recipe(_without_credentials(recipe)).rstrip(), "```"]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    lines += [
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
    ]
    lines += ["```", ""]
    return "\n".join(lines)


def _save(model: Any, loaded: Loaded, staging: Path, options: dict[str, str], card: str) -> None:
    from llmtune.infer.generate import set_stop_ids

    if loaded.head == "causal_lm":
        set_stop_ids(model, loaded.tokenizer)
    staging.mkdir(parents=True)
    if options["format"] == "gguf":
        from llmtune.jobs.gguf import write_gguf

        path = staging / f"model-{options['quant']}.gguf"
        counts = write_gguf(model, loaded.tokenizer, path, options["quant"], Path(loaded.label).name)
        console.info(f"gguf tensors by type: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
    else:
        model.save_pretrained(staging, max_shard_size=options["max_shard_size"])
        loaded.tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(card, encoding="utf-8")


def push_folder(out: Path, repo: str, endpoint: str | None, private: bool) -> str:
    """Upload the exported directory to REPO (created if missing) at --endpoint / HF_ENDPOINT / llmtune.yaml's
    endpoint, with the token from HF_TOKEN or the login store (never from the command line)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from llmtune.hub.settings import project_endpoint, resolve_endpoint, resolve_token

    url, _ = resolve_endpoint(endpoint, project_endpoint())
    token, _ = resolve_token()
    if token is None:
        raise UserError(f"--push {repo}: no Hub token; set HF_TOKEN or run `hf auth login` (endpoint {url})")
    api = HfApi(endpoint=url, token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=out, commit_message="Upload model exported by llmtune")
    except HfHubHTTPError as exc:
        raise UserError(
            f"--push {repo}: the hub refused the upload ({exc}); check HF_TOKEN / `hf auth login`"
        ) from None
    return info.commit_url


def export(
    model: str | None,
    adapter: str | None,
    out: Path,
    *,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    dtype: str = "checkpoint",
    revision: str = "main",
    trust_remote_code: bool = False,
    endpoint: str | None = None,
    eval_json: list[Path] | None = None,
    push: str | None = None,
    private: bool = False,
    fmt: str = "safetensors",
    quant: str = "f16",
) -> Path:
    """Merge, save (safetensors, or one GGUF file) and (optionally) push; returns the output directory."""
    refuse_nonempty(out, overwrite, "--out")
    check_shard_size(max_shard_size)
    check_format(fmt, quant)
    loaded = load_for_inference(
        model, adapter, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, endpoint=endpoint
    )
    if fmt == "gguf" and loaded.head != "causal_lm":
        raise UserError("--format gguf: only causal language models are written as GGUF (this is a classifier)")
    source = loaded.adapter or (Path(loaded.base) if Path(loaded.base).is_dir() else None)
    card = model_card(loaded, out.name, eval_numbers(source, list(eval_json or [])))
    merged = merged_model(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with quiet_loading():
            _save(merged, loaded, staging, {"format": fmt, "quant": quant, "max_shard_size": max_shard_size}, card)
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.info(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if loaded.head == "causal_lm":
        from llmtune.infer.generate import check_stops

        check_stops(merged, loaded.tokenizer, training_prompts(loaded), "the exported model")
    if push:
        console.info(f"pushed to {push_folder(out, push, endpoint, private)}")
    return out
