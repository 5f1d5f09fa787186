"""Exact means across micro-batches: every loss and metric is a (total, weight).

A loss function never averages by itself. It returns per-example values
``[N]``; ``mean_stat`` turns them into a ``Stat`` holding the mask-weighted
sum and the sum of weights. Two micro-batches' stats add up, and the mean is
taken once at the end, so gradient accumulation over micro-batches of unequal
real-example counts gives exactly the full batch's mean (Tunix's
``LossOutput(sum, denominator)``, generalised to metrics).

A ``Stat`` reduces in one of three ways, fixed when it is made:

* ``"mean"``: ``total`` = sum of weight * value, ``weight`` = sum of weights.
* ``"min"`` / ``"max"``: ``total`` = the extreme so far (over weight > 0),
  ``weight`` = how many values it saw.

An empty stat (weight 0) reads as 0.0, never NaN.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

_REDUCTIONS = ("mean", "min", "max")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stat:
    """One scalar statistic in mergeable form (see module docstring)."""

    total: Array
    weight: Array
    reduce: str = dataclasses.field(default="mean", metadata=dict(static=True))

    def value(self) -> Array:
        """The statistic: 0.0 when nothing was counted."""
        seen = self.weight > 0
        if self.reduce == "mean":
            return jnp.where(seen, self.total / jnp.where(seen, self.weight, 1.0), 0.0)
        return jnp.where(seen, self.total, 0.0)

    def merge(self, other: Stat) -> Stat:
        """Combines two stats as if their examples had been one batch."""
        if self.reduce != other.reduce:
            raise ValueError(f"cannot merge a {self.reduce!r} stat with a {other.reduce!r} stat")
        combine = {"mean": jnp.add, "min": jnp.minimum, "max": jnp.maximum}[self.reduce]
        return Stat(combine(self.total, other.total), self.weight + other.weight, self.reduce)

    def merge_leading_axis(self) -> Stat:
        """Merges a stack of stats (leaves ``[M]``, e.g. ``lax.scan`` outputs)."""
        combine = {"mean": jnp.sum, "min": jnp.min, "max": jnp.max}[self.reduce]
        return Stat(combine(self.total, axis=0), jnp.sum(self.weight, axis=0), self.reduce)


def mean_stat(values: Array, weights: Array) -> Stat:
    """Weighted mean of ``values [N]`` with ``weights [N]`` (0 = excluded)."""
    values = jnp.asarray(values, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    # where, not multiply: a NaN/inf in an excluded slot must not poison the sum.
    total = jnp.sum(jnp.where(weights > 0, weights * values, 0.0))
    return Stat(total, jnp.sum(weights), "mean")


def min_stat(values: Array, weights: Array) -> Stat:
    """Minimum of ``values [N]`` over slots with weight > 0."""
    values = jnp.asarray(values, jnp.float32)
    return Stat(jnp.min(jnp.where(weights > 0, values, jnp.inf)), jnp.sum(weights > 0).astype(jnp.float32), "min")


def max_stat(values: Array, weights: Array) -> Stat:
    """Maximum of ``values [N]`` over slots with weight > 0."""
    values = jnp.asarray(values, jnp.float32)
    return Stat(jnp.max(jnp.where(weights > 0, values, -jnp.inf)), jnp.sum(weights > 0).astype(jnp.float32), "max")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossOutput:
    """What a built loss returns: the loss and its metrics, all as ``Stat``.

    ``loss.total`` is the differentiable mask-weighted *sum* of per-example
    losses; ``loss.weight`` the number of real examples. ``differences`` names
    metrics computed at read-out as ``stats[a] - stats[b]`` (e.g. KTO's
    ``rewards/margins``, a difference of two means over different examples).

    One batch: ``loss, metrics = out.result()`` and differentiate ``loss``.
    Micro-batches: differentiate ``out.loss.total`` per micro-batch, sum the
    gradients and the outputs (``merge``), then scale the summed gradients by
    ``merged.grad_scale()``; the result equals the full batch's gradient.
    """

    loss: Stat
    stats: dict[str, Stat]
    differences: tuple[tuple[str, str, str], ...] = dataclasses.field(default=(), metadata=dict(static=True))

    def mean_loss(self) -> Array:
        """The mask-weighted mean loss (0.0 for an all-masked batch)."""
        return self.loss.value()

    def metrics(self) -> dict[str, Array]:
        """Scalar metrics by TRL name, ``loss`` included."""
        values = {"loss": self.loss.value()}
        values.update({name: stat.value() for name, stat in self.stats.items()})
        for name, minuend, subtrahend in self.differences:
            values[name] = values[minuend] - values[subtrahend]
        return values

    def result(self) -> tuple[Array, dict[str, Array]]:
        """``(mean loss, metrics)``."""
        return self.mean_loss(), self.metrics()

    def grad_scale(self) -> Array:
        """Multiplier turning summed gradients of ``loss.total`` into the mean's."""
        seen = self.loss.weight > 0
        return jnp.where(seen, 1.0 / jnp.where(seen, self.loss.weight, 1.0), 0.0)

    def merge(self, other: LossOutput) -> LossOutput:
        """Combines two micro-batches' outputs (same loss, same metric names)."""
        if self.stats.keys() != other.stats.keys():
            raise ValueError(f"cannot merge outputs with different metrics: {sorted(self.stats)} vs {sorted(other.stats)}")
        stats = {name: stat.merge(other.stats[name]) for name, stat in self.stats.items()}
        return LossOutput(self.loss.merge(other.loss), stats, self.differences)

    def merge_leading_axis(self) -> LossOutput:
        """Merges a stack of outputs, e.g. the per-micro-batch outputs of ``lax.scan``."""
        stats = {name: stat.merge_leading_axis() for name, stat in self.stats.items()}
        return LossOutput(self.loss.merge_leading_axis(), stats, self.differences)


def merge_outputs(outputs: Sequence[LossOutput]) -> LossOutput:
    """Merges a list of micro-batch outputs into one."""
    if not outputs:
        raise ValueError("merge_outputs needs at least one LossOutput")
    merged = outputs[0]
    for output in outputs[1:]:
        merged = merged.merge(output)
    return merged
