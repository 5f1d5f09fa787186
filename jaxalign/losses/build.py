"""From a ``LossConfig`` to a function ``inputs -> LossOutput``.

The one place where per-example losses become a loss: the weighted sum of the
configured terms, reduced with the mask by ``mean_stat``, plus the standard
metrics of the loss's kind. Built-in and user losses go through it alike.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxalign.losses.accounting import LossOutput, Stat, mean_stat
from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import INPUTS_BY_KIND, BatchColumns, LossInputs, MissingColumnError, with_safe_padding
from jaxalign.losses.metrics import (
    UNPAIRED_DIFFERENCES,
    implicit_pair_rewards,
    implicit_unpaired_rewards,
    pair_metrics,
    reward_model_metrics,
    unpaired_metrics,
)
from jaxalign.losses.registry import LossSpec, LossTerms

Array = jax.Array


def build_loss(cfg: LossConfig) -> Callable[[LossInputs], LossOutput]:
    """Returns ``loss_fn(inputs) -> LossOutput`` for the configured loss(es).

    Pure and jit-friendly; the config is closed over (resolve it once, outside
    the jitted step).
    """
    return loss_from_terms(cfg.specs(), cfg)


def loss_from_terms(terms: Sequence[tuple[LossSpec, float]], cfg: LossConfig) -> Callable[[LossInputs], LossOutput]:
    """``inputs -> LossOutput`` for the weighted sum of ``terms`` (``(spec, weight)``)."""
    kind = terms[0][0].kind
    expected_inputs = INPUTS_BY_KIND[kind]
    combined = len(terms) > 1

    def loss_fn(inputs: LossInputs) -> LossOutput:
        if not isinstance(inputs, expected_inputs):
            raise TypeError(
                f"loss {_describe(terms)} takes {expected_inputs.__name__}, got {type(inputs).__name__}"
            )
        for spec, _ in terms:
            if spec.needs_reference and not inputs.has_reference:
                raise ValueError(
                    f"loss {spec.name!r} needs reference log-probs, but the inputs have none; "
                    "configure a reference model (or precomputed ref_logps), or pick a reference-free loss"
                )
        inputs = dataclasses.replace(with_safe_padding(inputs), batch=BatchColumns(inputs.batch))
        mask = inputs.mask
        total = jnp.zeros_like(mask, dtype=jnp.float32)
        stats: dict[str, Stat] = {}
        rewards: tuple[Array, Array] | None = None
        for spec, weight in terms:
            term = _as_terms(_call(spec, inputs, cfg), spec)
            if jnp.shape(term.per_example) not in ((), mask.shape):
                raise ValueError(
                    f"loss {spec.name!r} returned per-example losses of shape {jnp.shape(term.per_example)}; "
                    f"expected {mask.shape}"
                )
            total = total + weight * term.per_example
            if combined:
                stats[f"loss/{spec.name}"] = mean_stat(term.per_example, mask)
            for name, value in term.metrics.items():
                stats.setdefault(name, value if isinstance(value, Stat) else mean_stat(value, mask))
            if rewards is None and term.chosen_rewards is not None:
                rewards = (term.chosen_rewards, term.rejected_rewards)
        standard, differences = _standard_metrics(kind, inputs, cfg, rewards)
        metrics = jax.lax.stop_gradient({**standard, **stats})  # only the loss trains
        return LossOutput(mean_stat(total, mask), metrics, differences)

    return loss_fn


def compute_loss(inputs: LossInputs, cfg: LossConfig) -> tuple[Array, dict[str, Array]]:
    """One-shot ``(mean loss, metrics)``; build the function once when calling often."""
    return build_loss(cfg)(inputs).result()


def _call(spec: LossSpec, inputs: LossInputs, cfg: LossConfig) -> Array | LossTerms:
    try:
        return spec.fn(inputs, cfg)
    except MissingColumnError as err:
        raise MissingColumnError(f"loss {spec.name!r}: {err}") from None


def _as_terms(result: Array | LossTerms, spec: LossSpec) -> LossTerms:
    if isinstance(result, LossTerms):
        return result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        return LossTerms(result[0], result[1])  # (per_example, metrics)
    if not hasattr(result, "shape"):
        raise TypeError(
            f"loss {spec.name!r} returned {type(result).__name__}; return per-example losses [N], "
            "(per_example, metrics) or a LossTerms"
        )
    return LossTerms(result)


def _standard_metrics(kind: str, inputs: LossInputs, cfg: LossConfig, rewards: tuple[Array, Array] | None):
    if kind == "pair":
        chosen, rejected = rewards if rewards is not None else implicit_pair_rewards(inputs, cfg.beta)
        return pair_metrics(inputs, chosen, rejected), ()
    if kind == "unpaired":
        unpaired_rewards = rewards[0] if rewards is not None else implicit_unpaired_rewards(inputs, cfg.beta)
        return unpaired_metrics(inputs, unpaired_rewards), UNPAIRED_DIFFERENCES
    return reward_model_metrics(inputs), ()


def _describe(terms) -> str:
    return "+".join(spec.name for spec, _ in terms)
