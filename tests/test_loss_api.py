"""The loss API's documented claims: per-example form, TRL's logps/* for SimPO and ORPO,
and PPO's math as public API that keeps padding out even when it holds NaN or inf."""

from __future__ import annotations

import numpy as np
import pytest
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.losses import LossConfig, build_loss, build_per_example_loss
from tests.test_losses import (
    ALL_CONFIGS,
    as_float64,
    inputs_for,
    masked_mean,
    pair_arrays,
    pair_inputs,
    random_mask,
)

PER_EXAMPLE_CONFIGS = ALL_CONFIGS + [LossConfig(name=["sigmoid", "sft"], weights=[1.0, 0.5])]


@pytest.mark.parametrize("cfg", PER_EXAMPLE_CONFIGS, ids=lambda c: "+".join(c.names))
def test_per_example_columns_average_to_the_metrics(cfg):
    rng = np.random.default_rng(11)
    mask = random_mask(rng)
    inputs = inputs_for(cfg, rng, mask)
    columns = {name: np.asarray(value) for name, value in build_per_example_loss(cfg)(inputs).items()}
    metrics = {name: float(value) for name, value in build_loss(cfg)(inputs).metrics().items()}
    real = columns["mask"] > 0
    assert all(np.isfinite(value).all() and not value[~real].any() for name, value in columns.items() if name != "mask")
    shared = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
              "margin", *[f"loss/{name}" for name in cfg.names if len(cfg.components) > 1],
              *[name for name in metrics if name in columns]}
    if cfg.kind == "unpaired":  # KTO's chosen/rejected are desirable/undesirable examples
        shared -= {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}
    checked = sorted(name for name in shared if name in metrics and name in columns)
    assert "loss" in checked and (len(checked) >= 2 or cfg.kind == "unpaired")
    if cfg.kind == "unpaired":
        desirable = mask * np.asarray(inputs.label)
        np.testing.assert_allclose(np.sum(columns["rewards"] * desirable) / np.sum(desirable), metrics["rewards/chosen"],
                                   rtol=1e-5)
    for name in checked:
        np.testing.assert_allclose(np.sum(columns[name][real] * mask[real]) / np.sum(mask), metrics[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    if cfg.kind == "pair":
        np.testing.assert_allclose(np.mean(columns["rewards/margins"][real] > 0), metrics["rewards/accuracies"],
                                   rtol=1e-6)


def test_per_example_terms_sum_to_the_weighted_loss():
    rng = np.random.default_rng(5)
    mask = random_mask(rng)
    inputs = pair_inputs(pair_arrays(rng), mask)
    columns = build_per_example_loss(LossConfig(name=["sigmoid", "sft"], weights=[1.0, 0.5]))(inputs)
    np.testing.assert_allclose(columns["loss"], columns["loss/sigmoid"] + 0.5 * columns["loss/sft"], rtol=1e-6)


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_simpo_and_orpo_log_per_token_average_logps_like_trl(name):
    rng = np.random.default_rng(7)
    x, mask = pair_arrays(rng), random_mask(rng)
    metrics = build_loss(LossConfig(name=name))(pair_inputs(x, mask, reference=False)).metrics()
    x64 = as_float64(x)
    np.testing.assert_allclose(metrics["logps/chosen"], masked_mean(x64["pc"] / x64["lc"], mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["logps/rejected"], masked_mean(x64["pr"] / x64["lr"], mask), rtol=1e-5)
    cpo = build_loss(LossConfig(name="cpo"))(pair_inputs(x, mask, reference=False)).metrics()
    np.testing.assert_allclose(cpo["logps/chosen"], masked_mean(x64["pc"], mask), rtol=1e-5)  # CPO: sums, as TRL


def test_ppo_math_is_public_and_padding_with_nan_or_inf_stays_out():
    ppo = losses.ppo
    assert {"gae", "whiten", "masked_mean", "policy_loss", "value_loss", "kl_estimate", "KLControl"} <= set(ppo.__all__)
    mask = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    clean = jnp.array([[0.5, -1.0, 0.0, 0.0], [2.0, 0.25, -0.5, 0.0]])
    dirty = clean.at[0, 2].set(jnp.nan).at[0, 3].set(jnp.inf).at[1, 3].set(-jnp.inf)
    assert float(ppo.masked_mean(dirty, mask)) == pytest.approx(float(ppo.masked_mean(clean, mask)))
    np.testing.assert_array_equal(ppo.whiten(dirty, mask), ppo.whiten(clean, mask))
    for got, want in zip(ppo.gae(dirty, dirty, mask, 0.99, 0.95), ppo.gae(clean, clean, mask, 0.99, 0.95)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    loss, metrics = ppo.policy_loss(dirty, clean, dirty, mask, 0.2)
    reference, reference_metrics = ppo.policy_loss(clean, clean, clean, mask, 0.2)
    assert float(loss) == pytest.approx(float(reference))
    assert all(np.isfinite(float(value)) for value in metrics.values())
