"""The alignment sections of the recipe: dpo (and its loss family), kto, orpo, cpo (and SimPO), and rl (grpo / rloo
with rewards)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmtune.schema.base import Strict

DpoLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]
"""The loss types TRL 1.16's DPOTrainer implements (DPOConfig.loss_type)."""
REWARD_KINDS = ("reward_model", "match", "regex", "length", "function")


class DpoSpec(Strict):
    beta: float = Field(0.1, gt=0)
    """Strength of the KL penalty towards the reference: higher keeps the policy closer."""
    loss_type: DpoLoss | list[DpoLoss] = "sigmoid"
    """DPO loss variant, or a list of them summed with loss_weights (e.g. [sigmoid, sft] for DPO + an SFT term)."""
    loss_weights: list[float] | None = None
    """One weight per loss in loss_type; null weighs each 1.0."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed share of flipped labels, for robust and exo_pair (which needs it above 0; its paper uses 1e-3)."""
    reference: str | None = None
    """An explicit reference model; null uses the starting model (with LoRA: the base with adapters off)."""

    @property
    def losses(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    @model_validator(mode="after")
    def _weights_fit(self) -> DpoSpec:
        if not self.losses:
            raise ValueError("dpo.loss_type is an empty list; give at least one loss (e.g. sigmoid)")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.losses):
            raise ValueError(
                f"dpo.loss_weights has {len(self.loss_weights)} weights for {len(self.losses)} losses in loss_type; "
                "give one weight per loss"
            )
        if "exo_pair" in self.losses and self.label_smoothing == 0:
            raise ValueError("dpo.loss_type exo_pair needs dpo.label_smoothing above 0 (its paper uses 0.001)")
        return self


class KtoSpec(Strict):
    beta: float = Field(0.1, gt=0)
    """Strength of the KL penalty towards the reference (the starting model)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: Kahneman-Tversky loss; apo_zero_unpaired: the unpaired anchored preference loss."""
    desirable_weight: float = Field(1.0, gt=0)
    """Weight of desirable (label true) rows; raise it when they are fewer than undesirable ones."""
    undesirable_weight: float = Field(1.0, gt=0)
    """Weight of undesirable (label false) rows."""


class OrpoSpec(Strict):
    beta: float = Field(0.1, gt=0)
    """Weight of the odds-ratio term added to the SFT loss on the chosen answer (the paper's lambda)."""


class CpoSpec(Strict):
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = "sigmoid"
    """sigmoid: CPO; hinge, ipo: those losses on the policy alone; simpo: SimPO (length-normalised log-probs,
    a target margin simpo_gamma)."""
    beta: float = Field(0.1, gt=0)
    """Scale of the log-prob difference (SimPO's paper uses 2 to 2.5)."""
    cpo_alpha: float | None = Field(None, ge=0)
    """Weight of the SFT term on the chosen answer; null: 1.0, and 0 with simpo (SimPO as its paper has it)."""
    simpo_gamma: float = Field(0.5, ge=0)
    """Target reward margin of simpo."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed share of flipped labels (sigmoid and simpo)."""

    @property
    def alpha(self) -> float:
        """cpo_alpha as resolved."""
        return self.cpo_alpha if self.cpo_alpha is not None else 0.0 if self.loss_type == "simpo" else 1.0


class RewardSpec(Strict):
    """One reward: set exactly one of reward_model, match, regex, length, function."""

    reward_model: str | None = None
    """A scorer: an `llmtune rm` run dir (LoRA scorer or full model), or a sequence-classification model dir or
    Hub id."""
    match: Literal["exact", "contains"] | None = None
    """1 when the completion equals (exact) or contains the row's reference answer, after normalisation (case,
    spaces, a trailing period); rows without an answer give no reward for it."""
    regex: str | None = None
    """1 when the completion matches this regular expression (re.search; anchor it with ^...$ for a whole format)."""
    length: tuple[int, int] | None = None
    """[min, max] characters: 1 inside the band, falling linearly to 0 at one band-width outside it."""
    function: str | None = None
    """A Python reward `path/to/file.py:name` called as TRL calls reward functions (prompts=, completions=, answer=,
    ...); runs code, so it needs rl.allow_code: true."""
    weight: float = 1.0
    """This reward's weight in the total (TRL's reward_weights)."""
    name: str | None = None
    """Its name in the logs (rewards/NAME/mean); null derives one (reward_model, exact, regex, length, the function)."""

    @property
    def kind(self) -> str:
        return next(k for k in REWARD_KINDS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        kind = self.kind
        return {"match": str(self.match), "function": str(self.function).rsplit(":", 1)[-1]}.get(kind, kind)

    @model_validator(mode="after")
    def _exactly_one(self) -> RewardSpec:
        given = [k for k in REWARD_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a reward sets exactly one of {', '.join(REWARD_KINDS)} (this one sets {', '.join(given) or 'none'})"
            )
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile ({exc})") from None
        return value

    @field_validator("length")
    @classmethod
    def _band(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] <= value[1]:
            raise ValueError(f"length {list(value)} is not a band [min, max] with 0 <= min <= max")
        return value

    @field_validator("function")
    @classmethod
    def _file_and_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r".+\.py:[A-Za-z_]\w*", value):
            raise ValueError(f"function {value!r} is not of the form path/to/file.py:function_name")
        return value


class RlSpec(Strict):
    rewards: list[RewardSpec] = []
    """The rewards, summed with their weights: reward models and checks (match, regex, length, function)."""
    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt; each is scored against the others of its group (the baseline)."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest completion; one that hits it without an end of turn counts as clipped."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    beta: float = Field(0.04, ge=0)
    """KL coefficient towards the reference (the starting model). 0 drops the reference: faster, but unanchored."""
    allow_code: bool = False
    """Allow `function` rewards: they import and run a Python file from the recipe. Off unless you trust it."""

    def check_for_stage(self, stage: str, completions_per_step: int) -> None:
        """Cross-field rules for grpo/rloo: rewards given, code allowed, whole groups in a step."""
        if not self.rewards:
            raise ValueError(
                f"stage {stage} needs rl.rewards: at least one of reward_model, match, regex, length or function"
            )
        code = [r.function for r in self.rewards if r.function]
        if code and not self.allow_code:
            raise ValueError(
                f"rl.rewards: function {code[0]} runs Python code from a file; set rl.allow_code: true if you trust it"
            )
        if completions_per_step % self.num_generations:
            raise ValueError(
                f"train.batch_size x train.grad_accum ({completions_per_step}) counts completions and must be a "
                f"multiple of rl.num_generations ({self.num_generations}), so every prompt's group fits in a step"
            )
