"""Stage dpo: direct preference optimisation with TRL's DPOTrainer, against a frozen reference; dpo.loss_type picks
any loss of TRL's DPO family (ipo, hinge, robust, bco_pair, sppo_hard, nca_pair, apo_zero, apo_down, discopop, ...)
or a weighted sum of several.

The reference, lean first:
  lora/qlora, new adapter      the base with the adapter switched off (no second copy of the weights)
  lora/qlora, model.adapter    the earlier stage's adapter, frozen: TRL copies it under the name "ref" and keeps
                               training the loaded one, so DPO starts from the SFT-tuned model and is anchored to it
                               (one copy of the base, two small adapters; the output is one adapter on the base)
  full/freeze                  the starting model's log-probs, computed once before training
                               (precompute_ref_log_probs), so no second copy is held either
  dpo.reference                an explicit model directory, loaded frozen beside the policy
Merging the SFT adapter into the base and adding a fresh DPO adapter would anchor to the same model, but its output
would only load on the merged weights (and merging into a 4-bit base is lossy), so the adapter is continued instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from trl import DPOTrainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> DPOTrainer:
    """A DPOTrainer for the recipe: policy with the method applied, the lean reference (see the module doc)."""
    from trl import DPOConfig, DPOTrainer

    from llmtune.stages.preference import build_preference_trainer, uses_adapters

    ref_model = load_reference(recipe) if recipe.dpo.reference else None
    keys = {
        "beta": recipe.dpo.beta,
        "loss_type": recipe.dpo.losses,
        "loss_weights": recipe.dpo.loss_weights,
        "label_smoothing": recipe.dpo.label_smoothing,
        "precompute_ref_log_probs": not uses_adapters(recipe) and ref_model is None,
    }
    return build_preference_trainer(recipe, args_common, DPOConfig, DPOTrainer, keys, ref_model=ref_model)


def load_reference(recipe: Recipe) -> PreTrainedModel:
    """dpo.reference: a full model directory (or Hub id), loaded frozen in the policy's dtype."""
    from llmtune.modeling import load_model, resolve_local

    name = recipe.dpo.reference
    path = resolve_local(name, "main", recipe, what="dpo.reference")
    if (path / "adapter_config.json").is_file():
        raise UserError(
            f"dpo.reference: {name} is an adapter, not a model; to use an SFT adapter as the reference, set "
            "model.adapter to it and leave dpo.reference unset (the starting model is the reference), or merge it first"
        )
    spec = recipe.model.model_copy(update={"name_or_path": str(path), "adapter": None})
    model = load_model(recipe.model_copy(update={"model": spec}))
    model.requires_grad_(False)
    return model.eval()
