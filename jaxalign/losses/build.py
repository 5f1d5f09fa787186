"""From a ``LossConfig`` to a function ``inputs -> LossOutput``.

The one place where per-example losses become a loss: the weighted sum of the
configured terms, reduced with the mask by ``mean_stat``, plus the standard
metrics of the loss's kind. Built-in and user losses go through it alike.

With a ``weight`` batch column (``data.weight_column``, annotator reliability)
the loss is the weighted mean ``sum(w * loss) / sum(w)`` over real examples,
kept as ``(sum, weight)`` so micro-batches still combine exactly; metrics stay
plain means over examples (they describe the data, not the objective).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxalign.losses.accounting import LossOutput, Stat, mean_stat
from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import (
    INPUTS_BY_KIND,
    STRENGTH_COLUMN,
    WEIGHT_COLUMN,
    BatchColumns,
    LossInputs,
    MissingColumnError,
    example_column,
    with_safe_padding,
)
from jaxalign.losses.metrics import (
    SCORE_COLUMNS,
    SCORE_METRICS,
    UNPAIRED_DIFFERENCES,
    implicit_pair_rewards,
    implicit_unpaired_rewards,
    pair_metrics,
    unpaired_metrics,
)
from jaxalign.losses.registry import LossSpec, LossTerms, soft_label_losses

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
    combined = len(terms) > 1

    def loss_fn(inputs: LossInputs) -> LossOutput:
        inputs, total, evaluated = _evaluate(terms, cfg, inputs)
        mask = inputs.mask
        loss_weights = example_weights(inputs)
        stats: dict[str, Stat] = {}
        for spec, term in evaluated:
            if combined:
                stats[f"loss/{spec.name}"] = mean_stat(term.per_example, loss_weights)
            for name, value in term.metrics.items():
                stats.setdefault(name, value if isinstance(value, Stat) else mean_stat(value, mask))
        standard, differences = _standard_metrics(kind, inputs, cfg, _first(evaluated, "rewards"),
                                                  _first(evaluated, "logps"))
        metrics = jax.lax.stop_gradient({**standard, **stats})  # only the loss trains
        return LossOutput(mean_stat(total, loss_weights), metrics, differences)

    return loss_fn


def example_weights(inputs: LossInputs) -> Array:
    """``mask`` times the ``weight`` batch column when there is one, ``[N]``."""
    if WEIGHT_COLUMN not in inputs.batch:
        return inputs.mask
    return inputs.mask * example_column(inputs, WEIGHT_COLUMN)


def build_per_example_loss(cfg: LossConfig) -> Callable[[LossInputs], dict[str, Array]]:
    """``inputs -> {name: [N]}``: every number of each example before the mean.

    ``loss`` (the weighted sum the trainer averages), ``loss/<name>`` for each
    term (unweighted), the loss's own ``[N]`` metrics, and the standard
    columns of its kind: pairs ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins``, ``logps/chosen``, ``logps/rejected``; unpaired
    ``rewards``, ``logps``; reward models ``rewards/chosen``,
    ``rewards/rejected``, ``margin``. ``mask`` says which slots are real;
    every column is 0.0 in the others. ``mean(values[mask > 0])`` of a column
    is the matching metric of ``build_loss`` (``rewards/accuracies`` is
    ``mean(rewards/margins > 0)``).
    """
    terms = cfg.specs()
    kind = terms[0][0].kind

    def per_example_fn(inputs: LossInputs) -> dict[str, Array]:
        inputs, total, evaluated = _evaluate(terms, cfg, inputs)
        columns = {"loss": total}
        for spec, term in evaluated:
            columns[f"loss/{spec.name}"] = jnp.broadcast_to(term.per_example, total.shape)
            for name, value in term.metrics.items():
                if not isinstance(value, Stat):
                    columns.setdefault(name, jnp.broadcast_to(value, total.shape))
        columns.update(_standard_columns(kind, inputs, cfg, _first(evaluated, "rewards"), _first(evaluated, "logps")))
        if WEIGHT_COLUMN in inputs.batch:
            columns[WEIGHT_COLUMN] = example_column(inputs, WEIGHT_COLUMN)
        real = inputs.mask > 0
        columns = {name: jnp.where(real, value, 0.0) for name, value in columns.items()}
        return {**columns, "mask": inputs.mask}

    return per_example_fn


def _evaluate(terms: Sequence[tuple[LossSpec, float]], cfg: LossConfig, inputs: LossInputs):
    """Checks the inputs, calls every term: ``(safe inputs, weighted total [N], [(spec, LossTerms)])``."""
    expected_inputs = INPUTS_BY_KIND[terms[0][0].kind]
    if not isinstance(inputs, expected_inputs):
        raise TypeError(f"loss {_describe(terms)} takes {expected_inputs.__name__}, got {type(inputs).__name__}")
    for spec, _ in terms:
        if spec.needs_reference and not inputs.has_reference:
            raise ValueError(
                f"loss {spec.name!r} needs reference log-probs, but the inputs have none; "
                "configure a reference model (or precomputed ref_logps), or pick a reference-free loss"
            )
    if STRENGTH_COLUMN in inputs.batch and not any(spec.soft_labels for spec, _ in terms):
        raise ValueError(
            f"the batch has per-pair preference strengths ({STRENGTH_COLUMN!r}, data.strength_column), which loss "
            f"{_describe(terms)} ignores; soft labels work with "
            + ", ".join(soft_label_losses()) + " "
            "(or unset data.strength_column)")
    inputs = dataclasses.replace(with_safe_padding(inputs), batch=BatchColumns(inputs.batch))
    mask = inputs.mask
    total = jnp.zeros_like(mask, dtype=jnp.float32)
    evaluated = []
    for spec, weight in terms:
        term = _as_terms(_call(spec, inputs, cfg), spec)
        if jnp.shape(term.per_example) not in ((), mask.shape):
            raise ValueError(
                f"loss {spec.name!r} returned per-example losses of shape {jnp.shape(term.per_example)}; "
                f"expected {mask.shape}"
            )
        total = total + weight * term.per_example
        evaluated.append((spec, term))
    return inputs, total, evaluated


def _first(evaluated, what: str) -> tuple[Array, Array] | None:
    """The first term's own ``(chosen, rejected)`` rewards or log-probs, if any term defines them."""
    for _, term in evaluated:
        chosen = getattr(term, f"chosen_{what}")
        if chosen is not None:
            return chosen, getattr(term, f"rejected_{what}")
    return None


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


def _standard_metrics(kind: str, inputs: LossInputs, cfg: LossConfig, rewards: tuple[Array, Array] | None,
                      logps: tuple[Array, Array] | None = None):
    if kind == "pair":
        chosen, rejected = rewards if rewards is not None else implicit_pair_rewards(inputs, cfg.beta)
        return pair_metrics(inputs, chosen, rejected, logps), ()
    if kind == "unpaired":
        unpaired_rewards = rewards[0] if rewards is not None else implicit_unpaired_rewards(inputs, cfg.beta)
        return unpaired_metrics(inputs, unpaired_rewards), UNPAIRED_DIFFERENCES
    return SCORE_METRICS[kind](inputs), ()


def _standard_columns(kind: str, inputs: LossInputs, cfg: LossConfig, rewards: tuple[Array, Array] | None,
                      logps: tuple[Array, Array] | None) -> dict[str, Array]:
    """The per-example values behind ``_standard_metrics``."""
    if kind == "pair":
        chosen, rejected = rewards if rewards is not None else implicit_pair_rewards(inputs, cfg.beta)
        chosen_logps, rejected_logps = logps if logps is not None else (
            inputs.policy_chosen_logps, inputs.policy_rejected_logps)
        return {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
                "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}
    if kind == "unpaired":
        return {"rewards": rewards[0] if rewards is not None else implicit_unpaired_rewards(inputs, cfg.beta),
                "logps": inputs.policy_logps}
    return SCORE_COLUMNS[kind](inputs)


def _describe(terms) -> str:
    return "+".join(spec.name for spec, _ in terms)
