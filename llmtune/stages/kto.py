"""Stage kto: Kahneman-Tversky optimisation with TRL's KTOTrainer, on unpaired rows (prompt, completion, label).

Each completion is pushed up (label true, desirable) or down (false) relative to the reference, against a KL
baseline estimated from mismatched prompt/completion pairs in the same batch (so train.batch_size must be 2 or more).
Preference pairs are read as two rows: chosen desirable, rejected undesirable. The reference is the lean one of
`llmtune.stages.dpo`: the adapter-off base, the earlier adapter frozen as "ref", or (full/freeze) the starting
model's log-probs computed once before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from trl import KTOTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> KTOTrainer:
    """A KTOTrainer for the recipe: policy with the method applied, kto rows, KTOConfig, the lean reference."""
    from trl import KTOConfig, KTOTrainer

    from llmtune.stages.preference import build_preference_trainer, uses_adapters

    if recipe.train.batch_size < 2:
        raise UserError("train.batch_size must be 2 or more for kto: its KL baseline pairs rows within a batch")
    kto = recipe.kto
    keys = {
        "beta": kto.beta,
        "loss_type": kto.loss_type,
        "desirable_weight": kto.desirable_weight,
        "undesirable_weight": kto.undesirable_weight,
        "precompute_ref_log_probs": not uses_adapters(recipe),
    }
    return build_preference_trainer(recipe, args_common, KTOConfig, KTOTrainer, keys)
