"""The standard metrics of each kind of loss, under TRL's names.

Every metric is a ``Stat`` (see ``accounting``), so it merges exactly across
micro-batches like the loss does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.accounting import Stat, max_stat, mean_stat, min_stat
from jaxalign.losses.inputs import ListwiseInputs, PointwiseInputs, PreferenceInputs, RewardInputs, UnpairedInputs

Array = jax.Array


def implicit_pair_rewards(inputs: PreferenceInputs, beta: float) -> tuple[Array, Array]:
    """TRL's rewards: ``beta * (policy - reference)`` log-ratios, ``[N]`` each.

    Reference-free: ``beta * policy`` summed log-probs (TRL's CPO convention).
    """
    chosen, rejected = inputs.policy_chosen_logps, inputs.policy_rejected_logps
    if inputs.has_reference:
        chosen, rejected = chosen - inputs.ref_chosen_logps, rejected - inputs.ref_rejected_logps
    return beta * chosen, beta * rejected


def pair_metrics(inputs: PreferenceInputs, chosen_rewards: Array, rejected_rewards: Array,
                 logps: tuple[Array, Array] | None = None) -> dict[str, Stat]:
    """``rewards/*``, ``logps/*`` and (when given) ``logits/*`` for a pair loss.

    ``logps/*`` are means of the summed log-probs, or of ``logps`` ``(chosen,
    rejected)`` when the loss gives its own (per-token averages for SimPO and
    ORPO, as TRL). ``logits/*`` are weighted by completion length, i.e. the
    mean raw logit over all completion tokens of the batch, as TRL computes it.
    """
    mask = inputs.mask
    chosen_logps, rejected_logps = logps if logps is not None else (
        inputs.policy_chosen_logps, inputs.policy_rejected_logps)
    stats = {
        "rewards/chosen": mean_stat(chosen_rewards, mask),
        "rewards/rejected": mean_stat(rejected_rewards, mask),
        "rewards/accuracies": mean_stat((chosen_rewards > rejected_rewards).astype(jnp.float32), mask),
        "rewards/margins": mean_stat(chosen_rewards - rejected_rewards, mask),
        "logps/chosen": mean_stat(chosen_logps, mask),
        "logps/rejected": mean_stat(rejected_logps, mask),
    }
    if inputs.chosen_logits_mean is not None:
        stats["logits/chosen"] = mean_stat(inputs.chosen_logits_mean, mask * inputs.chosen_lengths)
    if inputs.rejected_logits_mean is not None:
        stats["logits/rejected"] = mean_stat(inputs.rejected_logits_mean, mask * inputs.rejected_lengths)
    return stats


# Computed at read-out: a difference of two means over different examples.
UNPAIRED_DIFFERENCES = (("rewards/margins", "rewards/chosen", "rewards/rejected"),)


def implicit_unpaired_rewards(inputs: UnpairedInputs, beta: float) -> Array:
    """``beta * (policy - reference)`` log-ratio ``[N]`` (reference-free: ``beta * policy``)."""
    logps = inputs.policy_logps
    if inputs.has_reference:
        logps = logps - inputs.ref_logps
    return beta * logps


def unpaired_metrics(inputs: UnpairedInputs, rewards: Array) -> dict[str, Stat]:
    """TRL's KTO metrics: ``chosen`` = desirable examples, ``rejected`` = undesirable.

    ``rewards/margins`` (mean desirable reward minus mean undesirable reward)
    is derived at read-out, see ``UNPAIRED_DIFFERENCES``.
    """
    desirable = inputs.mask * inputs.label
    undesirable = inputs.mask * (1.0 - inputs.label)
    stats = {
        "rewards/chosen": mean_stat(rewards, desirable),
        "rewards/rejected": mean_stat(rewards, undesirable),
        "logps/chosen": mean_stat(inputs.policy_logps, desirable),
        "logps/rejected": mean_stat(inputs.policy_logps, undesirable),
    }
    if inputs.logits_mean is not None:
        stats["logits/chosen"] = mean_stat(inputs.logits_mean, desirable * inputs.lengths)
        stats["logits/rejected"] = mean_stat(inputs.logits_mean, undesirable * inputs.lengths)
    return stats


def reward_model_metrics(inputs: RewardInputs) -> dict[str, Stat]:
    """TRL's RewardTrainer metrics; ``*_reward`` span chosen and rejected scores."""
    mask, chosen, rejected = inputs.mask, inputs.chosen_rewards, inputs.rejected_rewards
    both = jnp.concatenate([chosen, rejected])
    both_mask = jnp.concatenate([mask, mask])
    stats = {
        "accuracy": mean_stat((chosen > rejected).astype(jnp.float32), mask),
        "margin": mean_stat(chosen - rejected, mask),
        "mean_reward": mean_stat(both, both_mask),
        "min_reward": min_stat(both, both_mask),
        "max_reward": max_stat(both, both_mask),
    }
    return stats


def _reward_range(scores: Array, weights: Array) -> dict[str, Stat]:
    return {"mean_reward": mean_stat(scores, weights), "min_reward": min_stat(scores, weights),
            "max_reward": max_stat(scores, weights)}


def pointwise_metrics(inputs: PointwiseInputs) -> dict[str, Stat]:
    """``mean_reward``, ``min_reward``, ``max_reward`` over the examples' scores."""
    return _reward_range(inputs.rewards, inputs.mask)


def listwise_metrics(inputs: ListwiseInputs) -> dict[str, Stat]:
    """``accuracy``: per example, the share of its reply pairs (i better than j) scored
    in that order, averaged over examples (for two replies, Bradley-Terry's accuracy);
    ``top1_accuracy``: the best reply scored highest; reward range over all replies."""
    scores, replies = inputs.rewards, inputs.reply_mask
    better = jnp.triu(jnp.ones((scores.shape[1], scores.shape[1]), bool), k=1)  # i ranked above j
    pairs = better[None] & (replies[:, :, None] > 0) & (replies[:, None, :] > 0)
    right = jnp.sum(pairs & (scores[:, :, None] > scores[:, None, :]), axis=(1, 2))
    per_example = right / jnp.maximum(jnp.sum(pairs, axis=(1, 2)), 1)
    top = jnp.argmax(jnp.where(replies > 0, scores, -jnp.inf), axis=1) == 0
    mask = inputs.mask
    return {"accuracy": mean_stat(per_example, mask), "top1_accuracy": mean_stat(top.astype(jnp.float32), mask),
            **_reward_range(scores.reshape(-1), (mask[:, None] * replies).reshape(-1))}


# The standard metrics and per-example columns of the reward-model kinds.
SCORE_METRICS = {"reward": reward_model_metrics, "pointwise": pointwise_metrics, "listwise": listwise_metrics}
SCORE_COLUMNS = {
    "reward": lambda inputs: {"rewards/chosen": inputs.chosen_rewards, "rewards/rejected": inputs.rejected_rewards,
                              "margin": inputs.chosen_rewards - inputs.rejected_rewards},
    "pointwise": lambda inputs: {"rewards": inputs.rewards},
    "listwise": lambda inputs: {"rewards/best": inputs.rewards[:, 0]},
}
