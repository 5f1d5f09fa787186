"""PPO's pure pieces on top of the rollout layer: the value head, the rollout's
advantages, its metrics and the clipped minibatch loss (the ``[prompt | reply]``
layout and the reply log-probs are ``jaxalign.rl.teacher_forcing``'s).

Shapes: B rows, Lp prompt slots (left-padded: every prompt ends in column
Lp - 1), N = ``max_new_tokens`` reply slots, H hidden size. Reply masks are
float ``[B, N]`` (1 up to and including the stop token, 0 in padding rows).
Everything here is a pure function of arrays; ``ppo.py`` jits it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses import ppo as ppo_losses
from jaxalign.models.layers import matmul

Batch = dict[str, jax.Array]


def head_values(hidden: jax.Array, head: dict) -> jax.Array:
    """A scalar value head on the policy's hidden states: ``[B, N, H]`` -> ``[B, N]`` float32."""
    return matmul(hidden, head["kernel"].astype(hidden.dtype), preferred_element_type=jnp.float32)[..., 0]


def advantages(batch: Batch, cfg: Any, kl_coef: jax.Array) -> dict[str, jax.Array]:
    """Per-token RLHF rewards (score on the last token, -kl_coef * KL on every token),
    GAE advantages (whitened) and returns, plus per-row numbers for the metrics.

    Needs ``old_logps``, ``ref_logps``, ``old_values``, ``response_mask`` ``[B, N]`` and ``scores`` ``[B]``."""
    mask = batch["response_mask"]
    kl = ppo_losses.kl_estimate(batch["old_logps"], batch["ref_logps"], cfg.kl_estimator) * mask
    rewards, non_score = ppo_losses.token_rewards(batch["scores"], kl, mask, kl_coef)
    if cfg.whiten_rewards:
        rewards = ppo_losses.whiten(rewards, mask, shift_mean=False)
    advantage, returns = ppo_losses.gae(rewards, batch["old_values"], mask, cfg.gamma, cfg.lam)
    return {
        "advantages": ppo_losses.whiten(advantage, mask),
        "returns": returns,
        "kl_sum": jnp.sum(kl, axis=1),
        "non_score_sum": jnp.sum(non_score, axis=1),
    }


def rollout_metrics(batch: Batch) -> dict[str, jax.Array]:
    """TRL's ``objective/*`` metrics (means over real rows; KL and entropy summed over each reply)."""
    rows = batch["example_mask"]
    count = jnp.maximum(jnp.sum(rows), 1.0)
    mean = lambda x: jnp.sum(x * rows) / count  # noqa: E731
    scores, non_score = mean(batch["scores"]), mean(batch["non_score_sum"])
    return {
        "objective/kl": mean(batch["kl_sum"]),
        "objective/entropy": mean(-jnp.sum(batch["old_logps"] * batch["response_mask"], axis=1)),
        "objective/scores": scores,
        "objective/non_score_reward": non_score,
        "objective/rlhf_reward": scores + non_score,
        "val/num_eos_tokens": jnp.sum(batch["num_eos"]),
        "reply_length": mean(jnp.sum(batch["response_mask"], axis=1)),
    }


def minibatch_loss(
    new_logps: jax.Array, entropy: jax.Array, new_values: jax.Array, batch: Batch, cfg: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate + ``vf_coef`` x clipped value loss - ``entropy_coef`` x entropy, over one minibatch."""
    mask = batch["response_mask"]
    policy_loss, policy_metrics = ppo_losses.policy_loss(new_logps, batch["old_logps"], batch["advantages"], mask,
                                                         cfg.cliprange)
    value_loss, value_metrics = ppo_losses.value_loss(new_values, batch["old_values"], batch["returns"], mask,
                                                      cfg.cliprange_value)
    mean_entropy = ppo_losses.masked_mean(entropy, mask)
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.entropy_coef * mean_entropy
    return loss, {**policy_metrics, **value_metrics, "loss/policy_avg": policy_loss, "loss/value_avg": value_loss,
                  "policy/entropy_avg": mean_entropy}
