"""Stages orpo and cpo: preference optimisation without a reference model, with TRL's ORPOTrainer and CPOTrainer
(in `trl.experimental` in TRL 1.16; the pinned version is the tested one).

ORPO adds to the SFT loss on the chosen answer an odds-ratio term (weight orpo.beta) that favours it over the
rejected one. CPO is DPO's loss on the policy alone plus an SFT term on the chosen answer (cpo.cpo_alpha); with
cpo.loss_type simpo it is SimPO: length-normalised log-probs and a target margin cpo.simpo_gamma, and no SFT term
unless cpo.cpo_alpha says so. Neither loads or copies a reference, whatever the method.

TRL's tokenization here keeps the prompt whole and cuts the answers to fit data.max_length; a pair whose prompt alone
fills it would keep an empty answer, whose mean log-prob is NaN (0/0) and turns every later step NaN, so such pairs
are dropped (`drop_emptied_pairs`), with a warning giving their number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import Trainer

IGNORED = -100  # the label of a prompt or padding token


def build(recipe: Recipe, args_common: dict[str, Any]) -> Trainer:
    """An ORPOTrainer (stage orpo) or CPOTrainer (stage cpo) with the method applied and the recipe's pairs."""
    from llmtune.stages.preference import build_preference_trainer

    if recipe.stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        keys = {"beta": recipe.orpo.beta}
        return build_preference_trainer(recipe, args_common, ORPOConfig, drop_emptied_pairs(ORPOTrainer), keys)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    cpo = recipe.cpo
    keys = {
        "loss_type": cpo.loss_type,
        "beta": cpo.beta,
        "cpo_alpha": cpo.alpha,
        "simpo_gamma": cpo.simpo_gamma,
        "label_smoothing": cpo.label_smoothing,
    }
    return build_preference_trainer(recipe, args_common, CPOConfig, drop_emptied_pairs(CPOTrainer), keys)


def drop_emptied_pairs(trainer_cls: type) -> type:
    """`trainer_cls` keeping only the tokenized pairs whose chosen and rejected answers both kept a token."""

    class Trainer(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.train_dataset = self.train_dataset.filter(has_both_answers)
            if self.eval_dataset is not None:
                self.eval_dataset = self.eval_dataset.filter(has_both_answers)

    Trainer.__name__ = Trainer.__qualname__ = trainer_cls.__name__
    return Trainer


def has_both_answers(row: dict) -> bool:
    return any(t != IGNORED for t in row["chosen_labels"]) and any(t != IGNORED for t in row["rejected_labels"])
