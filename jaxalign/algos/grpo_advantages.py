"""GRPO's advantage estimators, registered by name (``grpo.advantage_estimator``).

An estimator is a pure function ``fn(rewards, valid, cfg) -> advantages``:
``rewards`` ``[G, n]`` float32 (G prompt groups of n replies, each reply's
weighted reward), ``valid`` ``[G, n]`` bool (a real reply some source scored;
the others' rewards are meaningless and their advantages must be 0), ``cfg``
the ``GRPOConfig``. One advantage per reply, broadcast over its tokens by the loss.
Register your own with ``@register_advantage_estimator("name")`` or name it by
import path (``my_module:my_estimator``).

Standard deviations are Bessel-corrected (``ddof=1``, as TRL's ``torch.std``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxalign.algos.function_registry import FunctionRegistry

EPS = 1e-4  # TRL's: rewards / (std + 1e-4)
_ESTIMATORS = FunctionRegistry("grpo.advantage_estimator", "advantage estimator")
register_advantage_estimator = _ESTIMATORS.register


def get_estimator(spec: str) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
    return _ESTIMATORS.get(spec)


def estimator_names() -> list[str]:
    return _ESTIMATORS.names()


def _masked_stats(values: jax.Array, valid: jax.Array, axis: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(count, mean, unbiased std) over ``valid`` entries along ``axis`` (kept dims); std 0 under two."""
    weight = valid.astype(jnp.float32)
    count = jnp.sum(weight, axis=axis, keepdims=True)
    mean = jnp.sum(jnp.where(valid, values, 0.0), axis=axis, keepdims=True) / jnp.maximum(count, 1.0)
    square = jnp.sum(jnp.where(valid, jnp.square(values - mean), 0.0), axis=axis, keepdims=True)
    std = jnp.sqrt(square / jnp.maximum(count - 1.0, 1.0))
    return count, mean, jnp.where(count > 1, std, 0.0)


@register_advantage_estimator("grpo")
def group_relative(rewards: jax.Array, valid: jax.Array, cfg: Any) -> jax.Array:
    """GRPO (Shao et al. 2024): ``r - mean(group)``, divided by the group's std + 1e-4
    (``scale_rewards: group``), by the whole batch's (``batch``) or not at all (``none``: Dr. GRPO,
    Liu et al. 2025)."""
    _, mean, group_std = _masked_stats(rewards, valid, axis=1)
    centred = rewards - mean
    if cfg.scale_rewards == "group":
        centred = centred / (group_std + EPS)
    elif cfg.scale_rewards == "batch":
        centred = centred / (_masked_stats(rewards, valid, axis=(0, 1))[2] + EPS)
    return jnp.where(valid, centred, 0.0)


@register_advantage_estimator("rloo")
def leave_one_out(rewards: jax.Array, valid: jax.Array, cfg: Any) -> jax.Array:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j`` over the group's scored replies
    (= ``k / (k - 1) * (r_i - mean)``); 0 in a group with fewer than two. ``scale_rewards`` is ignored."""
    count, mean, _ = _masked_stats(rewards, valid, axis=1)
    advantage = (rewards - mean) * count / jnp.maximum(count - 1.0, 1.0)
    return jnp.where(valid & (count > 1), advantage, 0.0)


@register_advantage_estimator("reinforce_pp")
def batch_normalised(rewards: jax.Array, valid: jax.Array, cfg: Any) -> jax.Array:
    """REINFORCE++ (Hu 2025): the reward normalised over the whole batch, ``(r - mean) / (std + 1e-4)``,
    no per-prompt baseline. ``scale_rewards`` is ignored."""
    _, mean, std = _masked_stats(rewards, valid, axis=(0, 1))
    return jnp.where(valid, (rewards - mean) / (std + EPS), 0.0)
