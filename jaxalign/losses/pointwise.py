"""Pointwise reward-model losses: one score ``s`` per rated reply (``PointwiseInputs``).

Targets are batch columns made by the data layer (``jaxalign.data.ratings``):
``rating`` (the rating mapped from ``data.rating_scale`` onto [-1, 1]),
``rating_level`` (its level 0..K-1) and ``label`` (acceptable = 1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import PointwiseInputs, example_column
from jaxalign.losses.preference import log1mexp
from jaxalign.losses.registry import LossParams, LossTerms, register_loss

Array = jax.Array

_FAR = 1e4  # stands in for +-inf past the outer thresholds: finite values and gradients
_MIN_GAP = -1e-6  # log(sigma(a) - sigma(b)) needs log sigma(b) - log sigma(a) < 0


@register_loss("rating_regression", kind="pointwise", needs_reference=False)
def rating_regression_loss(inputs: PointwiseInputs, cfg: LossConfig) -> LossTerms:
    """Squared error to the normalised rating: ``(s - y)^2``, y in [-1, 1]. Metric ``mae``."""
    error = inputs.rewards - example_column(inputs, "rating")
    return LossTerms(error**2, {"mae": jnp.abs(error)})


@register_loss("acceptability", kind="pointwise", needs_reference=False)
def acceptability_loss(inputs: PointwiseInputs, cfg: LossConfig) -> LossTerms:
    """Binary cross-entropy of acceptable (label 1) vs unacceptable (0):
    ``-y log sigma(s) - (1 - y) log sigma(-s)``. ``accuracy``: the sign of s matches the label."""
    label = example_column(inputs, "label")
    loss = -label * jax.nn.log_sigmoid(inputs.rewards) - (1.0 - label) * jax.nn.log_sigmoid(-inputs.rewards)
    right = (inputs.rewards > 0) == (label > 0.5)
    return LossTerms(loss, {"accuracy": right.astype(jnp.float32)})


class OrdinalThresholds(LossParams):
    """K-1 ordered thresholds theta, stored unconstrained as ``u``:
    ``theta_0 = u_0``, ``theta_k = theta_{k-1} + softplus(u_k)``. They start at
    ``logit(k / K)``, the thresholds of equally likely levels at score 0."""

    name = "ordinal_thresholds"

    def init(self, levels: int) -> dict[str, Any]:
        if levels < 2:
            raise ValueError(f"the ordinal loss needs a rating scale of two or more levels, got {levels}")
        theta = np.log(np.arange(1, levels) / (levels - np.arange(1, levels)))
        raw = np.concatenate([theta[:1], np.log(np.expm1(np.diff(theta)))])
        return {self.name: jnp.asarray(raw, jnp.float32)}

    def export(self, params: dict[str, Any]) -> dict[str, Any]:
        return {self.name: [float(v) for v in np.asarray(thresholds(params[self.name]))]}


def thresholds(raw: Array) -> Array:
    """The ordered thresholds ``[K-1]`` from their unconstrained form."""
    return jnp.concatenate([raw[:1], raw[0] + jnp.cumsum(jax.nn.softplus(raw[1:]))])


def ordinal_log_probs(scores: Array, theta: Array) -> Array:
    """``log P(Y = k)`` ``[N, K]`` under the cumulative-link (logistic) model
    ``P(Y <= k) = sigma(theta_k - s)``."""
    padded = jnp.concatenate([jnp.array([-_FAR]), theta, jnp.array([_FAR])])
    upper = jax.nn.log_sigmoid(padded[1:][None, :] - scores[:, None])  # log P(Y <= k)
    lower = jax.nn.log_sigmoid(padded[:-1][None, :] - scores[:, None])  # log P(Y <= k - 1)
    return upper + log1mexp(jnp.minimum(lower - upper, _MIN_GAP))


@register_loss("ordinal", kind="pointwise", needs_reference=False, params=OrdinalThresholds())
def ordinal_loss(inputs: PointwiseInputs, cfg: LossConfig) -> LossTerms:
    """Cumulative-link (proportional odds) negative log-likelihood of the rating level
    (McCullagh 1980): ``-log(sigma(theta_y - s) - sigma(theta_{y-1} - s))`` with
    theta_{-1} = -inf, theta_{K-1} = +inf. ``accuracy``: the most likely level is the
    rated one; ``mae``: its distance in levels."""
    theta = thresholds(inputs.params[OrdinalThresholds.name])
    log_probs = ordinal_log_probs(inputs.rewards, theta)
    level = example_column(inputs, "rating_level").astype(jnp.int32)
    level = jnp.clip(level, 0, theta.shape[0])
    loss = -jnp.take_along_axis(log_probs, level[:, None], axis=1)[:, 0]
    predicted = jnp.argmax(log_probs, axis=1)
    return LossTerms(loss, {"accuracy": (predicted == level).astype(jnp.float32),
                            "mae": jnp.abs(predicted - level).astype(jnp.float32)})
