"""Reward-model losses: functions of the scores of chosen and rejected completions."""

from __future__ import annotations

import jax

from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import RewardInputs, example_column
from jaxalign.losses.registry import register_loss

Array = jax.Array


@register_loss("bradley_terry", kind="reward", needs_reference=False)
def bradley_terry_loss(inputs: RewardInputs, cfg: LossConfig) -> Array:
    """Bradley-Terry (Ouyang et al. 2022; margin from Llama 2, Touvron et al. 2023):

    ``-log sigma(r_c - r_r - margin) + center_rewards_coefficient * (r_c + r_r)^2``

    The centring term (Eisenstein et al. 2023) keeps rewards near 0; both
    terms are per example, so the mean matches TRL's RewardTrainer.
    """
    margin = example_column(inputs, "margin", default=0.0)  # TRL: only when the dataset has one
    loss = -jax.nn.log_sigmoid(inputs.chosen_rewards - inputs.rejected_rewards - margin)
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * (inputs.chosen_rewards + inputs.rejected_rewards) ** 2
    return loss
