"""PPO's pure model-side pieces: the ``[prompt | reply]`` layout, reply log-probs
(with entropy) and values from one forward, reward-model scores, the rollout's
advantages, and the clipped minibatch loss.

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
from jaxalign.models import layout_from_attention_mask, logps_from_hidden
from jaxalign.models.layers import matmul

Batch = dict[str, jax.Array]
LOGPS_CHUNK = 128


def sequences(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``[prompt | reply]`` ids, positions and segment ids ``[B, Lp + N]``.

    Positions continue each prompt (left padding does not count), and padding
    (left of the prompt, after the stop token) is segment 0, so a row computes
    exactly what the sampler saw."""
    ids = jnp.concatenate([batch["prompt_ids"], batch["tokens"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["response_mask"].astype(jnp.int32)], axis=1)
    positions, segment_ids = layout_from_attention_mask(mask)
    return ids, positions, segment_ids


def reply_hidden(hidden: jax.Array, prompt_length: int) -> jax.Array:
    """``[B, Lp + N, H]`` -> ``[B, N, H]``: the outputs that predict each reply token
    (the last prompt token predicts the first reply token)."""
    return hidden[:, prompt_length - 1:-1]


def reply_logps(weights: jax.Array, hidden: jax.Array, tokens: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies ``[B, N]`` of the reply tokens under softmax(logits / temperature),
    the distribution they were sampled from (as TRL does), without holding ``[B, N, V]`` logits.

    weights ``[H, V]`` (the output embedding), hidden ``[B, N, H]``, tokens ``[B, N]``."""
    hidden = hidden / jnp.asarray(temperature, hidden.dtype)  # logits / T = (hidden / T) @ W
    return logps_from_hidden(hidden, weights, tokens, LOGPS_CHUNK, return_entropy=True)


def head_values(hidden: jax.Array, head: dict) -> jax.Array:
    """A scalar value head on the policy's hidden states: ``[B, N, H]`` -> ``[B, N]`` float32."""
    return matmul(hidden, head["kernel"].astype(hidden.dtype), preferred_element_type=jnp.float32)[..., 0]


def last_token_scores(per_position: jax.Array, batch: Batch) -> jax.Array:
    """A reward model's per-position scores ``[B, Lp + N]`` -> the score at each reply's
    last token ``[B]`` (0 for padding rows and empty replies)."""
    prompt_length = batch["prompt_ids"].shape[1]
    lengths = jnp.sum(batch["response_mask"], axis=1).astype(jnp.int32)
    last = prompt_length + jnp.maximum(lengths, 1) - 1
    scores = jnp.take_along_axis(per_position, last[:, None], axis=1)[:, 0]
    return jnp.where(lengths > 0, scores, 0.0)


def ended_with_stop(tokens: jax.Array, mask: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    """``[B]`` bool: the reply emitted a stop token (it was not cut by the length limit)."""
    hit = jnp.zeros(tokens.shape, bool)
    for stop in stop_ids:
        hit = hit | (tokens == stop)
    return jnp.any(hit & (mask > 0), axis=1)


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
