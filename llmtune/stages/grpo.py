"""Stages grpo and rloo: online RL. The policy samples rl.num_generations completions per prompt, the rewards score
them, and each completion is pushed up or down by its advantage over its group (GRPO: the group's mean, scaled by its
std; RLOO: the mean of the others), with a KL penalty towards the reference weighted by rl.beta.

The reference, lean first (as in dpo):
  lora/qlora, new adapter      the base with the adapter switched off (no second copy of the weights)
  lora/qlora, model.adapter    the earlier stage's adapter, frozen as a second adapter named "ref" (one base)
  full/freeze                  a second copy of the starting model, loaded by TRL (completions are sampled during
                               training, so their reference log-probs cannot be computed once beforehand)
  rl.beta: 0                   no reference at all, and no KL term

A resumed run samples what the uninterrupted run would have: completions come from torch's generator, which the
checkpoint's rng_state restores, and the prompt order from TRL's RepeatSampler, whose own generator is made to replay
the earlier epochs' shuffles (see `replay_epochs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> Trainer:
    """A GRPOTrainer (stage grpo) or RLOOTrainer (stage rloo): rewards checked, then scorers and policy loaded."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if recipe.stage == "grpo" else (RLOOConfig, RLOOTrainer)
    return build_online(recipe, args_common, config_cls, trainer_cls)


def build_online(recipe: Recipe, args_common: dict[str, Any], config_cls: type, trainer_cls: type) -> Trainer:
    from llmtune.data.load import read_splits, to_dataset
    from llmtune.modeling import (
        apply_method,
        count_parameters,
        describe_parameters,
        load_model,
        load_tokenizer,
        lora_config,
    )
    from llmtune.stages.args import build_config
    from llmtune.stages.preference import without_ref_adapter
    from llmtune.stages.rewards import build_rewards, check_rewards
    from llmtune.stages.rm import warn_if_lora_ignored

    splits = read_splits(recipe)
    check_rewards(recipe, splits.train)  # every reward can run, before any model is loaded
    warn_if_lora_ignored(recipe)
    tokenizer = load_tokenizer(recipe)
    reward_funcs, weights = build_rewards(recipe)
    model = load_model(recipe)
    stop_on_end_of_turn(model, tokenizer)
    peft_config = None
    if recipe.method.kind in ("lora", "qlora") and not recipe.model.adapter:
        peft_config = lora_config(recipe.method, "CAUSAL_LM")  # TRL wraps it; the reference is the adapter-off base
    else:
        model = apply_method(model, recipe, "CAUSAL_LM")
    rl = recipe.rl
    eval_batch = args_common["per_device_eval_batch_size"]
    config = build_config(
        config_cls,
        {**args_common, "per_device_eval_batch_size": max(eval_batch // rl.num_generations, 1) * rl.num_generations},
        num_generations=rl.num_generations,
        max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature,
        beta=rl.beta,
        reward_weights=weights,
    )
    trainer = resumable(without_ref_adapter(trainer_cls))(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=to_dataset(splits.train),
        eval_dataset=to_dataset(splits.eval) if splits.eval is not None else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    console.info(f"{recipe.method.kind} policy: {describe_parameters(*count_parameters(trainer.model))}")
    return trainer


def resumable(trainer_cls: type) -> type:
    """`trainer_cls` whose prompt sampler replays earlier epochs on set_epoch (`replay_epochs`)."""

    class Trainer(trainer_cls):
        def _get_train_sampler(self, dataset: Any = None) -> Any:
            return replay_epochs(super()._get_train_sampler(dataset))

    Trainer.__name__ = Trainer.__qualname__ = trainer_cls.__name__
    return Trainer


def replay_epochs(sampler: Any) -> Any:
    """Give TRL's RepeatSampler a set_epoch (transformers calls it before each epoch) that reseeds its generator and
    draws the shuffles of the epochs before, so epoch e gets the same order in a fresh and in a resumed run.

    The sampler seeds its generator once, when it is built, and shuffles once per epoch; transformers does not replay
    earlier epochs on resume, so without this a run resumed in epoch e > 0 would reuse epoch 0's order (measured: a
    run of 4 steps an epoch, killed at step 5, trained step 6 on other prompts than the uninterrupted run).
    """
    import torch

    if not getattr(sampler, "shuffle", False) or getattr(sampler, "seed", None) is None:
        return sampler

    def set_epoch(epoch: int) -> None:
        sampler.generator.manual_seed(sampler.seed)
        for _ in range(epoch):
            torch.randperm(sampler.num_samples, generator=sampler.generator)

    sampler.set_epoch = set_epoch
    return sampler


def stop_on_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Sampling stops at the chat template's end of turn too (TRL stops on generation_config.eos_token_id)."""
    from llmtune.infer.generate import stop_ids

    model.generation_config.eos_token_id = stop_ids(model, tokenizer)
