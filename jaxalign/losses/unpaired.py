"""Unpaired losses: one completion per example, labelled desirable or not (KTO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.accounting import Stat
from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import UnpairedInputs, batch_scalar
from jaxalign.losses.registry import LossTerms, register_loss

Array = jax.Array


def kto_kl_baseline(inputs: UnpairedInputs) -> Array:
    """KTO's reference point z0: a scalar, clamped at 0, without gradient.

    ``batch["kl_baseline"]`` when the trainer supplies one (e.g. estimated over
    the whole batch before splitting it into micro-batches); otherwise the
    masked mean of ``policy_kl_logps - ref_kl_logps`` over the mismatched
    completions of this call; 0 when there are none (TRL without KL).
    """
    baseline = batch_scalar(inputs, "kl_baseline")
    if baseline is None and inputs.policy_kl_logps is not None and inputs.ref_kl_logps is not None:
        real = inputs.mask
        kl_sum = jnp.sum(jnp.where(real > 0, real * (inputs.policy_kl_logps - inputs.ref_kl_logps), 0.0))
        baseline = kl_sum / jnp.maximum(jnp.sum(real), 1e-6)  # 0 for an all-masked batch
    if baseline is None:
        return jnp.zeros((), jnp.float32)
    return jax.lax.stop_gradient(jnp.maximum(baseline, 0.0))


@register_loss("kto", kind="unpaired")
def kto_loss(inputs: UnpairedInputs, cfg: LossConfig) -> LossTerms:
    """KTO (Ethayarajh et al. 2024), with r = policy - reference log-ratio:

    desirable:   ``desirable_weight   * (1 - sigma(beta (r - z0)))``
    undesirable: ``undesirable_weight * (1 - sigma(beta (z0 - r)))``

    averaged over all real examples, as TRL does. z0: see ``kto_kl_baseline``.
    Reports ``kl`` (z0) besides the standard unpaired metrics.
    """
    z0 = kto_kl_baseline(inputs)
    log_ratio = inputs.policy_logps - inputs.ref_logps
    desirable = inputs.label > 0.5
    desirable_loss = cfg.desirable_weight * (1.0 - jax.nn.sigmoid(cfg.beta * (log_ratio - z0)))
    undesirable_loss = cfg.undesirable_weight * (1.0 - jax.nn.sigmoid(cfg.beta * (z0 - log_ratio)))
    real_count = jnp.sum(inputs.mask)
    # z0 weighted by the example count, so micro-batches merge to an example-weighted mean.
    kl = Stat(z0 * real_count, real_count, "mean")
    return LossTerms(jnp.where(desirable, desirable_loss, undesirable_loss), {"kl": kl})
