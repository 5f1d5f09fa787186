"""The input bundles a loss function receives.

The trainer reduces the packed batch (``jaxalign.batch``) to per-example
numbers, flattens every ``[R, K]`` array to ``[N]`` (``N = R * K``) and hands
one of these bundles to the loss. All arrays are flat ``[N]`` float32 unless
noted; ``mask`` is 1.0 for a real example and 0.0 for an empty slot.

Three kinds, one per family of losses (the registry's ``kind``):

* ``PreferenceInputs`` ("pair"): a chosen and a rejected completion per example
  (DPO family, SimPO, ORPO, CPO, SFT-on-chosen).
* ``UnpairedInputs`` ("unpaired"): one completion per example with a
  desirable/undesirable ``label`` (KTO).
* ``RewardInputs`` ("reward"): reward-model scores of a chosen and a rejected
  completion (Bradley-Terry).
* ``PointwiseInputs`` ("pointwise"): one reward-model score per example, with
  its rating or acceptability label in ``batch`` (regression, ordinal, BCE).
* ``ListwiseInputs`` ("listwise"): the scores ``[N, M]`` of up to M replies
  per example in rank order, best first (Plackett-Luce).

Each bundle carries ``batch``, the dict of batch columns, so a loss can read an
extra column (``margin``, ``label``, ``bco_delta``, ...) without a new field;
``example_column`` reads one as ``[N]``.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp

Array = jax.Array

# Padding slots get these values before a loss sees them, so that no formula
# (log1p(-exp(x)), division by a length) can produce inf/NaN there, not even
# in the gradient. Masked-out results are discarded afterwards anyway.
_SAFE_LOGP = -1.0
_SAFE_LENGTH = 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceInputs:
    """Per-example numbers for a pairwise preference loss; arrays ``[N]``.

    Log-probs are *summed* over completion tokens; lengths are completion token
    counts (float32). ``ref_*`` are None for a reference-free run. The optional
    ``*_logits_mean`` are the mean over completion tokens (and vocabulary) of
    the model's raw logits, for TRL's ``logits/chosen`` metric.
    """

    policy_chosen_logps: Array
    policy_rejected_logps: Array
    chosen_lengths: Array
    rejected_lengths: Array
    mask: Array
    ref_chosen_logps: Array | None = None
    ref_rejected_logps: Array | None = None
    chosen_logits_mean: Array | None = None
    rejected_logits_mean: Array | None = None
    batch: dict[str, Array] = dataclasses.field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen_logps is not None and self.ref_rejected_logps is not None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class UnpairedInputs:
    """Per-example numbers for an unpaired loss (KTO); arrays ``[N]``.

    ``label`` is 1.0 for a desirable completion, 0.0 for an undesirable one.
    ``policy_kl_logps`` / ``ref_kl_logps`` are the summed log-probs of a
    *mismatched* completion for the same slot (the prompt paired with another
    example's completion), from which KTO estimates its KL baseline z0.
    """

    policy_logps: Array
    lengths: Array
    label: Array
    mask: Array
    ref_logps: Array | None = None
    policy_kl_logps: Array | None = None
    ref_kl_logps: Array | None = None
    logits_mean: Array | None = None
    batch: dict[str, Array] = dataclasses.field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return self.ref_logps is not None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardInputs:
    """Reward-model scores of each pair's chosen and rejected completion; ``[N]``.

    The optional ``margin`` column (how much the chosen completion should beat
    the rejected one) is read from ``batch``, ``[N]`` or ``[R, K]``.
    """

    chosen_rewards: Array
    rejected_rewards: Array
    mask: Array
    batch: dict[str, Array] = dataclasses.field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return False


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PointwiseInputs:
    """One reward-model score per example, ``rewards`` ``[N]``; the targets are batch
    columns (``rating``, ``rating_level``, ``label``). ``params`` holds the loss's own
    trained parameters (e.g. ``ordinal_thresholds``; ``LossSpec.params``)."""

    rewards: Array
    mask: Array
    batch: dict[str, Array] = dataclasses.field(default_factory=dict)
    params: dict[str, Array] = dataclasses.field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return False


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class ListwiseInputs:
    """Scores of each example's replies in rank order (best first), ``rewards``
    ``[N, M]``; ``reply_mask`` ``[N, M]`` is 1 where the reply exists."""

    rewards: Array
    reply_mask: Array
    mask: Array
    batch: dict[str, Array] = dataclasses.field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return False


LossInputs = Union[PreferenceInputs, UnpairedInputs, RewardInputs, PointwiseInputs, ListwiseInputs]
WEIGHT_COLUMN = "weight"  # per-example weights: every loss is the weighted mean (losses.build)
STRENGTH_COLUMN = "preference_strength"  # P(chosen is better) per pair: soft labels


class MissingColumnError(KeyError, ValueError):
    """A loss read a batch column the batch does not have (a KeyError, and a
    ValueError so the command line reports it as one line)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class BatchColumns(dict):
    """The ``batch`` dict a loss sees: reading a missing column names the columns there are."""

    def __missing__(self, name: str):
        present = ", ".join(sorted(self)) or "none"
        raise MissingColumnError(f"this loss reads the batch column {name!r}, which the batch does not have; "
                                 f"it has: {present}")


jax.tree_util.register_pytree_with_keys(
    BatchColumns,
    lambda columns: ([(jax.tree_util.DictKey(k), columns[k]) for k in sorted(columns)], tuple(sorted(columns))),
    lambda keys, values: BatchColumns(zip(keys, values)),
)

INPUTS_BY_KIND: dict[str, type] = {
    "pair": PreferenceInputs,
    "unpaired": UnpairedInputs,
    "reward": RewardInputs,
    "pointwise": PointwiseInputs,
    "listwise": ListwiseInputs,
}

_LOGP_FIELDS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "policy_logps",
    "ref_logps",
    "policy_kl_logps",
    "ref_kl_logps",
)
_LENGTH_FIELDS = ("chosen_lengths", "rejected_lengths", "lengths")
_ZERO_FIELDS = ("chosen_logits_mean", "rejected_logits_mean", "logits_mean", "chosen_rewards", "rejected_rewards", "label",
                "rewards", "reply_mask")


def with_safe_padding(inputs: LossInputs) -> LossInputs:
    """Replaces every per-example field at masked-out slots by a harmless value.

    ``jnp.where`` also blocks the gradient to the original value there, so
    garbage in empty slots (a 0/0 from an upstream division, say) cannot leak
    NaN into the parameter gradients.
    """
    real = inputs.mask > 0
    replaced = {}
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if value is None or field.name in ("mask", "batch", "params"):
            continue
        if field.name in _LOGP_FIELDS:
            safe = _SAFE_LOGP
        elif field.name in _LENGTH_FIELDS:
            safe = _SAFE_LENGTH
        elif field.name in _ZERO_FIELDS:
            safe = 0.0
        else:  # a field added later without a safe value: leave it alone
            continue
        where_real = real.reshape(real.shape + (1,) * (value.ndim - real.ndim))  # [N] -> [N, M] for listwise
        replaced[field.name] = jnp.where(where_real, value, jnp.asarray(safe, dtype=value.dtype))
    return dataclasses.replace(inputs, **replaced)


def example_column(inputs: LossInputs, name: str, default: float | None = None) -> Array:
    """Reads ``inputs.batch[name]`` as a per-example ``[N]`` array.

    Accepts the packed ``[R, K]`` layout too (reshaped to ``[N]``) and scalars
    (broadcast). Without the column, returns ``default`` broadcast to ``[N]``,
    or raises a KeyError naming the columns present.
    """
    num_examples = inputs.mask.shape[0]
    if name not in inputs.batch:
        if default is None:
            present = ", ".join(sorted(inputs.batch)) or "none"
            raise MissingColumnError(f"this loss needs the batch column {name!r}; the batch has: {present}")
        return jnp.full((num_examples,), default, dtype=jnp.float32)
    column = jnp.asarray(inputs.batch[name], dtype=jnp.float32)
    if column.ndim == 0:
        return jnp.broadcast_to(column, (num_examples,))
    if column.size != num_examples:
        raise ValueError(f"batch column {name!r} has shape {column.shape}; expected {num_examples} values, one per example")
    return column.reshape(num_examples)


def batch_scalar(inputs: LossInputs, name: str) -> Array | None:
    """Reads an optional scalar column (e.g. ``bco_delta``), or None if absent."""
    if name not in inputs.batch:
        return None
    value = jnp.asarray(inputs.batch[name], dtype=jnp.float32)
    if value.size != 1:
        raise ValueError(f"batch entry {name!r} must be a scalar; got shape {value.shape}")
    return value.reshape(())


def completion_lengths(lengths: Array) -> Array:
    """Token counts safe to divide by: at least 1 (TRL clamps the same way)."""
    return jnp.maximum(lengths, 1.0)
