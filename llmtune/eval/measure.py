"""The numbers `llmtune eval` reports, each computed with batched forward passes (no per-token Python loops).

Plain text: every document is tokenized as the pt stage does (eos appended) and cut into windows of `context`
tokens, each window starting with the last token of the one before, so every token but a document's first is
predicted exactly once (context restarts at each window). perplexity = exp(total NLL / predicted tokens);
bits per character (byte) = total NLL in nats / ln 2 / characters (UTF-8 bytes) of the documents.
Chat: perplexity over the trained tokens only, with the sft stage's own encoding and masks (llmtune.data.tokenize).
Preference pairs: a reward model's accuracy (r(chosen) > r(rejected)) and mean margin; a policy's log-prob accuracy
and, against a reference, the implicit DPO accuracy, summing log-probs over the answer tokens only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from llmtune.data.formats import IGNORE, Row

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmtune.infer.generate import DecodeOptions


def sequence_logprobs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Sum over each row of log p(labels[t] | tokens < t) where labels[t] != -100 (labels aligned with input_ids)."""
    logp, _ = token_logprobs(model, input_ids, attention_mask, labels)
    return logp.sum(-1)


def token_logprobs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probs of the next label (0 where not scored) and the mask of scored positions, [B, T-1]."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    target = labels[:, 1:]
    scored = target != IGNORE
    nll = F.cross_entropy(logits.float().transpose(1, 2), target.masked_fill(~scored, 0), reduction="none")
    return torch.where(scored, -nll, torch.zeros_like(nll)), scored


def padded_batches(
    input_ids: Sequence[list[int]], labels: Sequence[list[int]], batch_size: int, pad_id: int, device: Any
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded batches of similar length (longest first): (original indices, input_ids, attention_mask, labels)."""
    import torch

    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = len(input_ids[index[0]])
        ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        lab = torch.full((len(index), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            n = len(input_ids[i])
            ids[row, :n] = torch.tensor(input_ids[i])
            lab[row, :n] = torch.tensor(labels[i])
            mask[row, :n] = 1
        yield index, ids.to(device), mask.to(device), lab.to(device)


def _device(model: PreTrainedModel) -> Any:
    return next(model.parameters()).device


def scored_logprobs(
    model: PreTrainedModel, input_ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int, batch_size: int
) -> tuple[list[float], list[int]]:
    """For each example, (sum of log-probs of its scored tokens, number of scored tokens), in input order."""
    import torch

    sums, counts = [0.0] * len(input_ids), [0] * len(input_ids)
    with torch.inference_mode():
        for index, ids, mask, lab in padded_batches(input_ids, labels, batch_size, pad_id, _device(model)):
            logp, scored = token_logprobs(model, ids, mask, lab)
            for i, total, count in zip(index, logp.sum(-1).tolist(), scored.sum(-1).tolist(), strict=True):
                sums[i], counts[i] = total, count
    return sums, counts


def text_windows(ids: list[int], context: int) -> list[list[int]]:
    """Windows of at most `context` tokens; each starts with the previous one's last token (predicted once each)."""
    if context < 2:
        raise ValueError("context must be at least 2 tokens")
    if len(ids) <= context:
        return [ids]
    step = context - 1
    return [ids[start : start + context] for start in range(0, len(ids) - 1, step)]


def text_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, context: int, batch_size: int
) -> dict[str, float]:
    """perplexity, bits_per_char, bits_per_byte and the counts behind them, over plain-text documents."""
    from llmtune.data.tokenize import encode

    rows = [{"text": text, "origin": f"document {i + 1}"} for i, text in enumerate(texts)]
    encoded = encode(rows, tokenizer, None, loss_on="all", max_length=None, bad_rows="error")
    windows = [w for ids in encoded.input_ids for w in text_windows(ids, context) if len(w) > 1]
    sums, counts = scored_logprobs(model, windows, windows, tokenizer.pad_token_id, batch_size)
    nll, tokens = -sum(sums), sum(counts)
    chars, nbytes = sum(len(t) for t in texts), sum(len(t.encode("utf-8")) for t in texts)
    return {
        "perplexity": math.exp(nll / tokens),
        "bits_per_char": nll / math.log(2) / chars,
        "bits_per_byte": nll / math.log(2) / nbytes,
        "nll": nll,
        "tokens": tokens,
    }


def document_perplexities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, context: int, batch_size: int
) -> list[float]:
    """The perplexity of each plain-text document on its own (text_perplexity's windows, summed per document)."""
    from llmtune.data.tokenize import encode

    rows = [{"text": text, "origin": f"document {i + 1}"} for i, text in enumerate(texts)]
    encoded = encode(rows, tokenizer, None, loss_on="all", max_length=None, bad_rows="error")
    owners, windows = [], []
    for doc, ids in enumerate(encoded.input_ids):
        for window in text_windows(ids, context):
            if len(window) > 1:
                owners.append(doc)
                windows.append(window)
    sums, counts = scored_logprobs(model, windows, windows, tokenizer.pad_token_id, batch_size)
    nll, tokens = [0.0] * len(texts), [0] * len(texts)
    for doc, total, count in zip(owners, sums, counts, strict=True):
        nll[doc] -= total
        tokens[doc] += count
    return [math.exp(n / t) if t else math.inf for n, t in zip(nll, tokens, strict=True)]


def chat_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    *,
    loss_on: str = "all_assistant",
    max_length: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """perplexity and mean loss over the trained tokens of chat rows (the sft stage's masks), and their count."""
    from llmtune.data.templates import ChatRenderer, resolve_chat_template
    from llmtune.data.tokenize import encode

    renderer = ChatRenderer(resolve_chat_template(tokenizer, None), tokenizer)
    encoded = encode(list(rows), tokenizer, renderer, loss_on=loss_on, max_length=max_length, bad_rows="error")
    sums, counts = scored_logprobs(model, encoded.input_ids, encoded.labels, tokenizer.pad_token_id, batch_size)
    loss = -sum(sums) / sum(counts)
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": sum(counts)}


def answer_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[list[dict]], batch_size: int
) -> list[float]:
    """log p(last assistant turn | the messages before it) per conversation, masked as sft trains the last turn."""
    from llmtune.data.templates import ChatRenderer, resolve_chat_template
    from llmtune.data.tokenize import encode

    renderer = ChatRenderer(resolve_chat_template(tokenizer, None), tokenizer)
    rows = [{"messages": conv, "origin": f"pair {i // 2 + 1}"} for i, conv in enumerate(conversations)]
    encoded = encode(rows, tokenizer, renderer, loss_on="last_assistant", max_length=None, bad_rows="error")
    return scored_logprobs(model, encoded.input_ids, encoded.labels, tokenizer.pad_token_id, batch_size)[0]


def _pairs(rows: Sequence[Row]) -> list[list[dict]]:
    """[prompt+chosen, prompt+rejected, ...] for preference rows, interleaved."""
    return [row["prompt"] + row[side] for row in rows for side in ("chosen", "rejected")]


def reward_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int = 8
) -> dict[str, float]:
    """A reward model on preference pairs: accuracy of r(chosen) > r(rejected), mean margin, mean rewards."""
    from llmtune.infer.score import score

    rewards = score(model, tokenizer, _pairs(rows), batch_size=batch_size)
    chosen, rejected = rewards[0::2], rewards[1::2]
    margin = chosen - rejected
    return {
        "reward_accuracy": (margin > 0).float().mean().item(),
        "reward_margin": margin.mean().item(),
        "reward_chosen": chosen.mean().item(),
        "reward_rejected": rejected.mean().item(),
    }


def preference_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    *,
    reference: PreTrainedModel | None = None,
    reference_is_base: bool = False,
    batch_size: int = 8,
) -> dict[str, float]:
    """A policy on preference pairs: logp accuracy; with a reference (a model, or the base under the adapter) the
    implicit DPO accuracy (logπ−logπ_ref)(chosen) > (logπ−logπ_ref)(rejected) and the mean log-ratio margin."""
    convs = _pairs(rows)
    policy = answer_logprobs(model, tokenizer, convs, batch_size)
    pc, pr = policy[0::2], policy[1::2]
    out = {
        "logp_accuracy": sum(c > r for c, r in zip(pc, pr, strict=True)) / len(pc),
        "logp_chosen": sum(pc) / len(pc),
        "logp_rejected": sum(pr) / len(pr),
    }
    if reference is None and not reference_is_base:
        return out
    ref_model = model if reference_is_base else reference
    with model.disable_adapter() if reference_is_base else nullcontext():
        ref = answer_logprobs(ref_model, tokenizer, convs, batch_size)
    margins = [(c - rc) - (r - rr) for c, r, rc, rr in zip(pc, pr, ref[0::2], ref[1::2], strict=True)]
    out["dpo_accuracy"] = sum(m > 0 for m in margins) / len(margins)
    out["dpo_margin"] = sum(margins) / len(margins)
    return out


def generation_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    options: DecodeOptions,
    batch_size: int = 16,
) -> tuple[dict[str, float], list[str]]:
    """Generate each conversation's last assistant turn from what precedes it; exact match and ROUGE-L against it
    through the shipped `evaluate` modules (ROUGE-L only with the `metrics` extra: without it the metric is
    skipped with a note). Returns the metrics and the generations."""
    from llmtune.errors import has_module, install_hint
    from llmtune.eval.metrics import load_metric
    from llmtune.infer.generate import generate

    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    predictions = [outs[0] for outs in generate(model, tokenizer, prompts, options, batch_size=batch_size)]
    metrics = dict(load_metric("exact_match").compute(predictions=predictions, references=references))
    if has_module("rouge_score"):
        rouge = load_metric("rouge").compute(predictions=predictions, references=references, rouge_types=["rougeL"])
        metrics.update(rouge)
    else:
        _note_once(f"ROUGE-L skipped: it needs rouge-score ({install_hint('rouge_score')})")
    return metrics, predictions


@functools.cache
def _note_once(message: str) -> None:
    from llmtune import console

    console.info(message, markup=False)
