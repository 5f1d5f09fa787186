"""PPO's pure pieces (RLHF): KL estimators, per-token rewards, GAE, whitening,
clipped policy and value losses, and the adaptive KL controller.

Arrays are ``[B, T]`` over response tokens with a 0/1 float ``mask`` (1 up to
and including the stop token). Formulas follow Ziegler et al. 2019 and
Ouyang et al. 2022; metric names follow TRL's PPO trainer. Masked-out entries
never reach a result, even when they hold NaN or inf (``jnp.where``, not a
multiplication by the mask). Public API: see docs/losses.md, "PPO's math".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["KLControl", "gae", "kl_estimate", "masked_mean", "masked_var", "policy_loss", "token_rewards",
           "value_loss", "whiten"]


def _masked(values: Array, mask: Array) -> Array:
    """``values * mask`` where ``mask`` > 0, else 0: a NaN/inf in a padded slot stays out (0 * inf is NaN)."""
    return jnp.where(mask > 0, values * mask, 0.0)


def masked_mean(values: Array, mask: Array, axis: int | None = None) -> Array:
    """Mean over entries where ``mask`` is 1 (0 when none); masked entries may hold anything."""
    total = jnp.sum(_masked(values, mask), axis=axis)
    count = jnp.sum(mask, axis=axis)
    return total / jnp.maximum(count, 1.0)


def masked_var(values: Array, mask: Array, unbiased: bool = True) -> Array:
    mean = masked_mean(values, mask)
    count = jnp.sum(mask)
    var = masked_mean(jnp.square(values - mean), mask)
    correction = jnp.where(unbiased & (count > 1), count / jnp.maximum(count - 1.0, 1.0), 1.0)
    return var * correction


def whiten(values: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """Zero-mean (optionally), unit-variance over the masked entries; masked-out entries are 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _masked(whitened, mask)


def kl_estimate(logps: Array, ref_logps: Array, estimator: str = "k1") -> Array:
    """Per-token estimate of KL(policy || reference) from sampled tokens ``[B, T]``.

    ``k1``: log p - log q (unbiased, can be negative); ``k3``: (q/p - 1) - log(q/p)
    (unbiased, never negative, lower variance; Schulman 2020).
    """
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got '{estimator}'")


def token_rewards(scores: Array, kl: Array, mask: Array, kl_coef: Array | float) -> tuple[Array, Array]:
    """RLHF reward per token ``[B, T]``: ``-kl_coef * kl`` on every response token,
    plus the sequence score ``[B]`` on its last token. Returns (rewards, non_score_rewards)."""
    non_score = _masked(-kl_coef * kl, mask)
    last = jnp.sum(mask, axis=1).astype(jnp.int32) - 1
    on_last = jax.nn.one_hot(jnp.maximum(last, 0), mask.shape[1], dtype=scores.dtype) * (last >= 0)[:, None]
    return non_score + scores[:, None] * on_last, non_score


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float) -> tuple[Array, Array]:
    """Generalised advantage estimation over ``[B, T]``; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1},
    with V and A zero past the response's end (masked entries).
    """
    values = _masked(values, mask)
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = _masked(rewards + gamma * next_values - values, mask)

    def backwards(carry: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, step_mask = xs
        advantage = delta + gamma * lam * carry * step_mask
        return advantage, advantage

    _, reversed_advantages = jax.lax.scan(backwards, jnp.zeros(rewards.shape[0], rewards.dtype),
                                          (deltas.T[::-1], mask.T[::-1]))
    advantages = _masked(reversed_advantages[::-1].T, mask)
    return advantages, _masked(advantages + values, mask)


def policy_loss(new_logps: Array, old_logps: Array, advantages: Array, mask: Array,
                clip_range: float) -> tuple[Array, dict[str, Array]]:
    """Clipped surrogate objective (as a loss), with TRL's policy metrics."""
    log_ratio = new_logps - old_logps
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    metrics = {
        "policy/approxkl_avg": masked_mean(0.5 * jnp.square(log_ratio), mask),
        "policy/clipfrac_avg": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "val/ratio": masked_mean(ratio, mask),
    }
    return loss, metrics


def value_loss(new_values: Array, old_values: Array, returns: Array, mask: Array,
               clip_range_value: float) -> tuple[Array, dict[str, Array]]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2)."""
    clipped_values = old_values + jnp.clip(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = jnp.square(new_values - returns)
    clipped_error = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_error, clipped_error), mask)
    return loss, {"val/clipfrac_avg": masked_mean((clipped_error > unclipped_error).astype(jnp.float32), mask)}


@dataclasses.dataclass(frozen=True)
class KLControl:
    """Fixed (``target`` None) or adaptive KL coefficient (Ziegler et al. 2019)."""

    init_coef: float = 0.05
    target: float | None = None
    horizon: float = 10_000.0

    def update(self, coef: Array, observed_kl: Array, num_samples: int) -> Array:
        """The next coefficient: moved proportionally toward ``target``, the
        error clipped to +-20% per update as in the paper."""
        if self.target is None:
            return coef
        error = jnp.clip(observed_kl / self.target - 1.0, -0.2, 0.2)
        return coef * (1.0 + error * num_samples / self.horizon)
