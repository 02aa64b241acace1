"""Stage rm: a reward model, i.e. a one-output sequence-classification head on a causal LM base.

TRL's RewardTrainer trains it with the pairwise (Bradley-Terry) loss -log σ(r(chosen) - r(rejected)): the chosen
answer's score must exceed the rejected one's. The run directory reloads as a scorer with
`llmtune.infer.score.load_scorer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from trl import RewardTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> RewardTrainer:
    """A RewardTrainer for the recipe: seq-cls model with the method applied, preference rows, RewardConfig."""
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from llmtune.data.load import load_splits
    from llmtune.modeling import count_parameters, describe_parameters, load_model, load_tokenizer
    from llmtune.stages.args import build_config

    tokenizer = load_tokenizer(recipe)
    train, evals = load_splits(recipe)
    with suppress_seqcls_warning():  # the new head and the unused lm_head are expected, not news
        model = load_model(recipe, head="sequence_classification", num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_scorer_method(model, recipe)
    console.info(f"{recipe.method.kind} reward model: {describe_parameters(*count_parameters(model))}")
    config = build_config(RewardConfig, args_common, max_length=recipe.data.max_length)
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=evals, processing_class=tokenizer
    )
    check_kept(len(train), len(trainer.train_dataset), recipe.data.max_length, "chosen or rejected")
    return trainer


def apply_scorer_method(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
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
