"""Reward-model losses: functions of the scores of chosen and rejected completions."""

from __future__ import annotations

import jax

from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import RewardInputs, example_column
from jaxalign.losses.preference import pair_label_smoothing, smoothed_logistic
from jaxalign.losses.registry import register_loss

Array = jax.Array


@register_loss("bradley_terry", kind="reward", needs_reference=False, soft_labels=True)
def bradley_terry_loss(inputs: RewardInputs, cfg: LossConfig) -> Array:
    """Bradley-Terry (Ouyang et al. 2022; margin from Llama 2, Touvron et al. 2023):

    ``-log sigma(r_c - r_r - margin) + center_rewards_coefficient * (r_c + r_r)^2``

    The centring term (Eisenstein et al. 2023) keeps rewards near 0; both
    terms are per example, so the mean matches TRL's RewardTrainer. With a
    ``preference_strength`` column p (soft labels), the first term is the
    binary cross-entropy against p,
    ``-p log sigma(d) - (1 - p) log sigma(-d)``, ``d = r_c - r_r - margin``;
    p = 1 is exactly the term above.
    """
    margin = example_column(inputs, "margin", default=0.0)  # TRL: only when the dataset has one
    loss = smoothed_logistic(inputs.chosen_rewards - inputs.rejected_rewards - margin, pair_label_smoothing(inputs, 0.0))
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * (inputs.chosen_rewards + inputs.rejected_rewards) ** 2
    return loss
