"""A user's advantage estimator and policy loss, named by import path in tests/test_grpo_math.py."""

import jax.numpy as jnp

from jaxalign.algos.grpo_losses import clipped_surrogate


def max_baseline(rewards, valid, cfg):
    """Advantage = reward minus the group's best reward (never positive)."""
    best = jnp.max(jnp.where(valid, rewards, -jnp.inf), axis=1, keepdims=True)
    return jnp.where(valid, rewards - best, 0.0)


def sum_loss(inputs, cfg):
    """The clipped surrogate summed over every token, with one extra metric."""
    per_token, metrics = clipped_surrogate(inputs, cfg)
    return jnp.sum(per_token), {**metrics, "custom/tokens": jnp.sum(inputs.mask)}


def returns_scalar(inputs, cfg):
    return jnp.sum(inputs.logps * inputs.mask)
