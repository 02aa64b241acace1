"""Scoring with a reward model: load an `llmtune rm` output (a full model, or an adapter saved with its head) and
give one scalar per conversation, tokenized as TRL's RewardTrainer tokenizes training pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmtune.data.formats import Messages
from llmtune.errors import UserError
from llmtune.infer.load import Loaded, load_for_inference

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_scorer(path: str | Path, device: str | None = None, endpoint: str | None = None) -> Loaded:
    """A reward model from an `llmtune rm` output dir (a full model, or an adapter saved with its head), or any
    sequence-classification model dir or Hub id, in eval mode."""
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    with suppress_seqcls_warning():
        loaded = load_for_inference(str(path), device=device, endpoint=endpoint)
    if loaded.head != "sequence_classification":
        raise UserError(f"reward model: {path} is a causal LM, not a reward model (the output dir of `llmtune rm`)")
    return loaded


def check_scorer(name: str, endpoint: str | None = None, what: str = "reward model") -> None:
    """Refuse a reward model that is not a sequence classifier from its files alone, before any model is loaded."""
    from llmtune.hub.local import resolve_dir
    from llmtune.infer.load import _adapter_base, _head, run_recipe, split_spec

    base, adapter = split_spec(name, None)
    if base is None:
        base = _adapter_base(adapter, run_recipe(adapter))
    model_dir = resolve_dir(base, "main", endpoint, what)
    if _head(model_dir, adapter) != "sequence_classification":
        raise UserError(
            f"{what}: {name} is a causal LM, not a reward model; give the output dir of `llmtune rm` or a "
            "sequence-classification model (config.json architectures ...ForSequenceClassification)"
        )


def score_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Messages], answers: Sequence[str]
) -> torch.Tensor:
    """One reward per answer, each scored after its own prompt as an assistant turn (grpo and eval --reward)."""
    convs = [[*p, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)]
    return score(model, tokenizer, convs)


def generated_reward(scorer: Loaded, chats: Sequence[dict], generations: Sequence[str]) -> float:
    """The mean score of answers generated for chat rows (each in place of the row's last answer)."""
    prompts = [row["messages"][:-1] for row in chats if row.get("messages")]
    return float(score_answers(scorer.model, scorer.tokenizer, prompts, generations).mean())


def score(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], batch_size: int = 16
) -> torch.Tensor:
    """One reward per conversation (prompt + answer messages), tokenized as RewardTrainer tokenizes training pairs."""
    import torch

    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(conversations), batch_size):
        ids = [
            tokenizer.apply_chat_template(list(conv), tokenize=True, return_dict=True)["input_ids"]
            for conv in conversations[start : start + batch_size]
        ]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        scores.append(logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.empty(0)
