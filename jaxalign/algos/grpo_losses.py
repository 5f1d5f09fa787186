"""GRPO's policy losses (``grpo.loss_type``), registered by name.

Every built-in loss is the same clipped per-token surrogate (plus ``beta`` x the
k3 KL to the reference) reduced to a scalar in its own way; ``loss_type`` picks
the reduction:

- ``grpo``: each reply's mean over its tokens, then the mean over replies
  (Shao et al. 2024; long replies' tokens weigh less).
- ``bnpo``: the mean over the minibatch's tokens.
- ``dr_grpo``: the sum over tokens / (replies x ``max_completion_length``), a
  constant normaliser (Liu et al. 2025).
- ``dapo``: the sum over tokens / the tokens of the whole generation batch per
  update (every token of a rollout weighs the same in every update; Yu et al. 2025).

The ratio is per token (``importance_sampling_level: token``) or one per reply,
``exp(mean over its tokens of log pi/pi_old)`` (``sequence``: GSPO, Zheng et al.
2025). Clipping is ``[1 - epsilon, 1 + epsilon_high]`` (DAPO's clip-higher).

A loss is ``fn(inputs: PolicyLossInputs, cfg) -> loss`` or ``(loss, {metric: scalar})``;
register your own with ``@register_policy_loss("name")`` or name it by import path.
Shapes: B replies, N completion slots. Masked entries may hold anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxalign.algos.function_registry import FunctionRegistry

_LOSSES = FunctionRegistry("grpo.loss_type", "policy loss")
register_policy_loss = _LOSSES.register


def get_policy_loss(spec: str) -> Callable:
    return _LOSSES.get(spec)


def policy_loss_names() -> list[str]:
    return _LOSSES.names()


@dataclasses.dataclass(frozen=True)
class PolicyLossInputs:
    """logps ``[B, N]``: the policy's log-probs of the sampled tokens (differentiated);
    old_logps ``[B, N]``: the sampling policy's (stored at rollout time); ref_logps ``[B, N]``
    or None (``beta`` 0); advantages ``[B]``; mask ``[B, N]`` float (tokens that count);
    row_mask ``[B]`` float (replies that count; a reply may count with no token, e.g. a masked
    truncated one, as in TRL); batch_tokens: active tokens of the whole generation batch
    divided by the updates it is split into (``dapo``'s normaliser)."""

    logps: jax.Array
    old_logps: jax.Array
    ref_logps: jax.Array | None
    advantages: jax.Array
    mask: jax.Array
    row_mask: jax.Array
    batch_tokens: jax.Array


def k3_kl(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(policy || reference): ``exp(q - p) - (q - p) - 1`` (Schulman 2020)."""
    delta = ref_logps - logps
    return jnp.exp(delta) - delta - 1.0


def _mean_over(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask > 0, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def clipped_surrogate(inputs: PolicyLossInputs, cfg: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The per-token loss ``[B, N]`` (``-min(ratio A, clip(ratio) A) + beta k3``) and TRL's
    ``clip_ratio/*`` metrics (token shares, over the mask) and ``kl`` (masked mean k3)."""
    mask = inputs.mask
    # Masked slots are zeroed before any arithmetic: a NaN there would reach the gradient through exp.
    logps = jnp.where(mask > 0, inputs.logps, 0.0)
    log_ratio = jnp.where(mask > 0, logps - inputs.old_logps, 0.0)
    if cfg.importance_sampling_level == "sequence":
        log_ratio = (jnp.sum(log_ratio, axis=1, keepdims=True) / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
                     ) * jnp.ones_like(log_ratio)
    ratio = jnp.exp(log_ratio)
    advantages = inputs.advantages[:, None]
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.clip_high)
    per_token = -jnp.minimum(ratio * advantages, clipped * advantages)
    low = (ratio < 1.0 - cfg.epsilon_low) & (advantages < 0)
    high = (ratio > 1.0 + cfg.clip_high) & (advantages > 0)
    metrics = {"clip_ratio/low_mean": _mean_over(low.astype(jnp.float32), mask),
               "clip_ratio/high_mean": _mean_over(high.astype(jnp.float32), mask),
               "clip_ratio/region_mean": _mean_over((low | high).astype(jnp.float32), mask)}
    if inputs.ref_logps is not None and cfg.beta > 0:
        kl = k3_kl(logps, jnp.where(mask > 0, inputs.ref_logps, 0.0))
        per_token = per_token + cfg.beta * kl
        metrics["kl"] = _mean_over(kl, mask)
    return jnp.where(mask > 0, per_token, 0.0), metrics


def _reduced(inputs: PolicyLossInputs, cfg: Any, reduce: Callable[[jax.Array, jax.Array], jax.Array]):
    per_token, metrics = clipped_surrogate(inputs, cfg)
    return reduce(per_token, inputs.mask), metrics


@register_policy_loss("grpo")
def grpo_loss(inputs: PolicyLossInputs, cfg: Any):
    def reduce(per_token, mask):
        per_reply = jnp.sum(per_token, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return jnp.sum(per_reply * inputs.row_mask) / jnp.maximum(jnp.sum(inputs.row_mask), 1.0)

    return _reduced(inputs, cfg, reduce)


@register_policy_loss("bnpo")
def bnpo_loss(inputs: PolicyLossInputs, cfg: Any):
    return _reduced(inputs, cfg, lambda per_token, mask: jnp.sum(per_token) / jnp.maximum(jnp.sum(mask), 1.0))


@register_policy_loss("dr_grpo")
def dr_grpo_loss(inputs: PolicyLossInputs, cfg: Any):
    def reduce(per_token, mask):
        return jnp.sum(per_token) / (jnp.maximum(jnp.sum(inputs.row_mask), 1.0) * cfg.max_completion_length)

    return _reduced(inputs, cfg, reduce)


@register_policy_loss("dapo")
def dapo_loss(inputs: PolicyLossInputs, cfg: Any):
    return _reduced(inputs, cfg, lambda per_token, mask: jnp.sum(per_token) / jnp.maximum(inputs.batch_tokens, 1.0))
