"""Stage rm: a reward model, i.e. a one-output sequence-classification head on a causal LM base.

TRL's RewardTrainer trains it with the pairwise (Bradley-Terry) loss -log σ(r(chosen) - r(rejected)): the chosen
answer's score must exceed the rejected one's. The run directory reloads as a scorer with `load_scorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import RewardTrainer

    from llmtune.inference import Loaded

Messages = list[dict[str, str]]


def build(recipe: Recipe, args_common: dict[str, Any]) -> RewardTrainer:
    """A RewardTrainer for the recipe: seq-cls model with the method applied, preference rows, RewardConfig."""
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from llmtune.data.load import load_splits
    from llmtune.modeling import count_parameters, describe_parameters, load_model, load_tokenizer
    from llmtune.train import build_config

    tokenizer = load_tokenizer(recipe)
    train, evals = load_splits(recipe)
    with suppress_seqcls_warning():  # the new head and the unused lm_head are expected, not news
        model = load_model(recipe, head="sequence_classification", num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = _apply_method(model, recipe)
    console.info(f"{recipe.method.kind} reward model: {describe_parameters(*count_parameters(model))}")
    config = build_config(RewardConfig, args_common, max_length=recipe.data.max_length)
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=evals, processing_class=tokenizer
    )
    check_kept(len(train), len(trainer.train_dataset), recipe.data.max_length, "chosen or rejected")
    return trainer


def _apply_method(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
    """apply_method for a scorer; an earlier stage's adapter (often a causal-LM SFT adapter) is trained further.

    The adapter's LoRA weights fit the seq-cls model's backbone unchanged. It is rebuilt with task type SEQ_CLS, so
    peft trains and saves the new `score` head with it, and the output loads on the base like any reward adapter.
    """
    from llmtune.modeling import apply_method, resolve_local

    if not recipe.model.adapter:
        return apply_method(model, recipe, task_type="SEQ_CLS")
    warn_if_lora_ignored(recipe)
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    path = resolve_local(recipe.model.adapter, "main", recipe, what="model.adapter")
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"model.adapter: {path} is not a PEFT adapter (no adapter_config.json in it)")
    config = PeftConfig.from_pretrained(str(path))
    config.task_type, config.inference_mode = "SEQ_CLS", False
    scorer = get_peft_model(model, config)
    state = get_peft_model_state_dict(scorer)  # the fresh head included, so every expected key is present
    saved = load_peft_weights(str(path))
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise UserError(f"model.adapter: {path} has weights this model lacks (e.g. {unknown[0]}); is it for this base?")
    set_peft_model_state_dict(scorer, {**state, **saved})
    return scorer


def warn_if_lora_ignored(recipe: Recipe) -> None:
    """With model.adapter the earlier adapter is trained further in its own shape, so method.lora does not apply."""
    if recipe.model.adapter and "lora" in recipe.method.model_fields_set:
        console.warn(
            f"method.lora is ignored: the adapter {recipe.model.adapter} is trained further with its own rank and "
            "target modules"
        )


def check_kept(before: int, after: int, max_length: int, what: str) -> None:
    """TRL drops pairs that do not fit data.max_length; say how many, and stop when none is left."""
    if after == before:
        return
    if after == 0:
        raise UserError(
            f"data.max_length {max_length}: all {before} training pairs are too long ({what} does not fit); "
            "raise data.max_length"
        )
    console.warn(f"data.max_length {max_length}: {before - after} of {before} training pairs are too long and dropped")


def load_scorer(path: str | Path, device: str | None = None) -> Loaded:
    """A reward model from an `llmtune rm` output dir (a full model, or an adapter saved with its head), eval mode."""
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from llmtune.inference import load_for_inference

    with suppress_seqcls_warning():
        loaded = load_for_inference(str(path), device=device)
    if loaded.head != "sequence_classification":
        raise UserError(f"reward model: {path} is a causal LM, not a reward model (the output dir of `llmtune rm`)")
    return loaded


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
