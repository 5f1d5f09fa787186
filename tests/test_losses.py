"""jaxalign.losses: every loss against a NumPy transcription of its formula,
masking, exact micro-batch accumulation, gradients, config validation and the
registry."""

from __future__ import annotations

import dataclasses
import re
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalign
from jaxalign.losses import (
    LossConfig,
    LossOutput,
    PreferenceInputs,
    RewardInputs,
    UnpairedInputs,
    build_loss,
    compute_loss,
    get_loss,
    list_losses,
    merge_outputs,
    register_loss,
)
from jaxalign.losses import registry as registry_module

RTOL = 1e-5
ATOL = 1e-6
N = 16

# --------------------------------------------------------------------------
# NumPy references, float64, written from the papers / TRL formulas.
# --------------------------------------------------------------------------


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def smoothed(z, eps):
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def reference_pair_loss(name: str, x: dict, cfg: LossConfig, real: np.ndarray) -> np.ndarray:
    """Per-example loss of built-in pair loss ``name`` on real examples."""
    beta, eps = cfg.beta, cfg.label_smoothing
    pc, pr, lc, lr = x["pc"], x["pr"], x["lc"], x["lr"]
    if name in ("simpo", "cpo", "orpo", "sft"):
        if name == "simpo":
            return smoothed(beta * (pc / lc - pr / lr) - cfg.simpo_gamma, eps)
        if name == "cpo":
            return smoothed(beta * (pc - pr), eps) + cfg.cpo_alpha * (-pc / lc)
        if name == "orpo":
            ac, ar = pc / lc, pr / lr
            log_odds = (ac - ar) - (np.log(1 - np.exp(ac)) - np.log(1 - np.exp(ar)))
            return -ac - beta * log_sigmoid(log_odds)
        return -pc / lc
    a, b = pc - x["rc"], pr - x["rr"]
    logits = a - b
    if name == "sigmoid":
        return smoothed(beta * logits, eps)
    if name == "robust":
        return ((1 - eps) * -log_sigmoid(beta * logits) + eps * log_sigmoid(-beta * logits)) / (1 - 2 * eps)
    if name == "ipo":
        return (a / lc - b / lr - 1 / (2 * beta)) ** 2
    if name == "hinge":
        return np.maximum(0.0, 1 - beta * logits)
    if name == "sppo_hard":
        return (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2
    if name == "nca_pair":
        return -log_sigmoid(beta * a) - 0.5 * log_sigmoid(-beta * a) - 0.5 * log_sigmoid(-beta * b)
    if name == "bco_pair":
        delta = x["bco_delta"] if "bco_delta" in x else np.mean(np.concatenate([beta * a[real], beta * b[real]]))
        return -log_sigmoid(beta * a - delta) - log_sigmoid(-(beta * b - delta))
    if name == "apo_zero":
        return 1 - sigmoid(beta * a) + sigmoid(beta * b)
    if name == "apo_down":
        return sigmoid(beta * a) + 1 - sigmoid(beta * (a - b))
    if name == "sigmoid_norm":
        return -log_sigmoid(beta * (a / lc - b / lr))
    raise KeyError(name)


REFERENCE_FREE = ("simpo", "cpo", "orpo", "sft")
PAIR_CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"label_smoothing": 0.2, "beta": 0.5}),
    ("robust", {"label_smoothing": 0.1}),
    ("ipo", {}),
    ("ipo", {"beta": 0.5}),
    ("hinge", {}),
    ("sppo_hard", {}),
    ("nca_pair", {}),
    ("bco_pair", {}),
    ("apo_zero", {}),
    ("apo_down", {}),
    ("sigmoid_norm", {"beta": 2.0}),
    ("simpo", {"beta": 2.0, "simpo_gamma": 0.7}),
    ("simpo", {"label_smoothing": 0.1}),
    ("cpo", {"cpo_alpha": 0.3, "label_smoothing": 0.05}),
    ("orpo", {"beta": 0.25}),
    ("sft", {}),
]
BUILTIN_PAIR = sorted({name for name, _ in PAIR_CASES})

# --------------------------------------------------------------------------
# Random inputs. Padding slots hold garbage (NaN log-probs, zero lengths) that
# must not reach the loss, its metrics or its gradient.
# --------------------------------------------------------------------------


def random_mask(rng, n=N):
    mask = (rng.random(n) < 0.75).astype(np.float32)
    mask[:2] = 1.0
    mask[-1] = 0.0
    return mask


def pair_arrays(rng, n=N):
    lc = rng.integers(1, 30, n).astype(np.float32)
    lr = rng.integers(1, 30, n).astype(np.float32)
    pc = (-rng.uniform(0.1, 2.0, n) * lc).astype(np.float32)
    pr = (-rng.uniform(0.1, 2.0, n) * lr).astype(np.float32)
    return {
        "pc": pc,
        "pr": pr,
        "rc": (pc + rng.normal(0, 2.0, n)).astype(np.float32),
        "rr": (pr + rng.normal(0, 2.0, n)).astype(np.float32),
        "lc": lc,
        "lr": lr,
        "gc": rng.normal(0, 1, n).astype(np.float32),
        "gr": rng.normal(0, 1, n).astype(np.float32),
    }


def pair_inputs(x, mask, *, reference=True, garbage=True, batch=None) -> PreferenceInputs:
    def padded(values, junk):
        values = np.array(values, dtype=np.float32)
        if garbage:
            values[mask == 0] = junk
        return jnp.asarray(values)

    return PreferenceInputs(
        policy_chosen_logps=padded(x["pc"], np.nan),
        policy_rejected_logps=padded(x["pr"], np.nan),
        ref_chosen_logps=padded(x["rc"], np.nan) if reference else None,
        ref_rejected_logps=padded(x["rr"], np.nan) if reference else None,
        chosen_lengths=padded(x["lc"], 0.0),
        rejected_lengths=padded(x["lr"], 0.0),
        chosen_logits_mean=padded(x["gc"], np.inf),
        rejected_logits_mean=padded(x["gr"], np.inf),
        mask=jnp.asarray(mask),
        batch=batch or {},
    )


def as_float64(x):
    return {k: np.asarray(v, np.float64) for k, v in x.items()}


def masked_mean(values, mask):
    return float(np.sum(values[mask > 0] * mask[mask > 0]) / np.sum(mask))


# --------------------------------------------------------------------------
# Every loss against its formula.
# --------------------------------------------------------------------------


def test_every_builtin_loss_has_a_reference_test():
    builtin = {name for name in list_losses() if get_loss(name).fn.__module__.startswith("jaxalign.losses")}
    feedback = {"rating_regression", "acceptability", "ordinal", "plackett_luce"}  # tests/test_feedback_losses.py
    assert builtin == set(BUILTIN_PAIR) | {"kto", "bradley_terry"} | feedback


PAIR_RUNS = [(n, o, True) for n, o in PAIR_CASES] + [(n, o, False) for n, o in PAIR_CASES if n in REFERENCE_FREE]


@pytest.mark.parametrize(
    "name,options,reference",
    PAIR_RUNS,
    ids=[f"{n}-{'-'.join(o)}-{'ref' if r else 'noref'}" for n, o, r in PAIR_RUNS],
)
def test_pair_loss_matches_numpy(name, options, reference):
    rng = np.random.default_rng(zlib.crc32(f"{name}-{options}-{reference}".encode()))
    x, mask = pair_arrays(rng), random_mask(rng)
    cfg = LossConfig(name=name, **options)
    loss, metrics = compute_loss(pair_inputs(x, mask, reference=reference), cfg)

    real = mask > 0
    x64 = as_float64(x)
    expected = reference_pair_loss(name, x64, cfg, real)
    np.testing.assert_allclose(loss, masked_mean(expected, mask), rtol=RTOL, atol=ATOL)
    assert metrics["loss"] == loss

    # TRL's metrics: implicit rewards (beta * log-ratio, or the loss's own).
    if name in ("simpo", "orpo"):
        chosen_r, rejected_r = cfg.beta * x64["pc"] / x64["lc"], cfg.beta * x64["pr"] / x64["lr"]
    elif name == "cpo" or not reference:
        chosen_r, rejected_r = cfg.beta * x64["pc"], cfg.beta * x64["pr"]
    else:
        chosen_r, rejected_r = cfg.beta * (x64["pc"] - x64["rc"]), cfg.beta * (x64["pr"] - x64["rr"])
    expected_metrics = {
        "rewards/chosen": masked_mean(chosen_r, mask),
        "rewards/rejected": masked_mean(rejected_r, mask),
        "rewards/margins": masked_mean(chosen_r - rejected_r, mask),
        "rewards/accuracies": masked_mean((chosen_r > rejected_r).astype(float), mask),
        # SimPO and ORPO log per-token averages under TRL's names, as TRL's CPO/ORPO trainers do.
        "logps/chosen": masked_mean(x64["pc"] / x64["lc"] if name in ("simpo", "orpo") else x64["pc"], mask),
        "logps/rejected": masked_mean(x64["pr"] / x64["lr"] if name in ("simpo", "orpo") else x64["pr"], mask),
        # token-weighted, as TRL: sum of per-token logits / number of tokens
        "logits/chosen": np.sum((x64["gc"] * x64["lc"])[real]) / np.sum(x64["lc"][real]),
        "logits/rejected": np.sum((x64["gr"] * x64["lr"])[real]) / np.sum(x64["lr"][real]),
    }
    for key, value in expected_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=key)
    assert all(np.isfinite(v) for v in metrics.values())


def test_orpo_and_cpo_report_trl_extras():
    rng = np.random.default_rng(3)
    x, mask = pair_arrays(rng), random_mask(rng)
    _, metrics = compute_loss(pair_inputs(x, mask, reference=False), LossConfig(name="orpo", beta=0.2))
    x64 = as_float64(x)
    ac, ar = x64["pc"] / x64["lc"], x64["pr"] / x64["lr"]
    log_odds = (ac - ar) - (np.log1p(-np.exp(ac)) - np.log1p(-np.exp(ar)))
    np.testing.assert_allclose(metrics["log_odds_chosen"], masked_mean(log_odds, mask), rtol=RTOL)
    np.testing.assert_allclose(metrics["log_odds_ratio"], masked_mean(log_sigmoid(log_odds), mask), rtol=RTOL)
    np.testing.assert_allclose(metrics["nll_loss"], masked_mean(-ac, mask), rtol=RTOL)
    _, metrics = compute_loss(pair_inputs(x, mask, reference=False), LossConfig(name="cpo"))
    np.testing.assert_allclose(metrics["nll_loss"], masked_mean(-ac, mask), rtol=RTOL)


def test_bco_pair_takes_delta_from_the_batch():
    rng = np.random.default_rng(4)
    x, mask = pair_arrays(rng), random_mask(rng)
    cfg = LossConfig(name="bco_pair")
    loss, metrics = compute_loss(pair_inputs(x, mask, batch={"bco_delta": jnp.float32(0.3)}), cfg)
    expected = reference_pair_loss("bco_pair", {**as_float64(x), "bco_delta": 0.3}, cfg, mask > 0)
    np.testing.assert_allclose(loss, masked_mean(expected, mask), rtol=RTOL)
    np.testing.assert_allclose(metrics["bco/delta"], 0.3, rtol=RTOL)


def unpaired_arrays(rng, n=N, kl_shift=1.0):
    lengths = rng.integers(1, 30, n).astype(np.float32)
    policy = (-rng.uniform(0.1, 2.0, n) * lengths).astype(np.float32)
    policy_kl = (-rng.uniform(0.1, 2.0, n) * lengths).astype(np.float32)
    return {
        "p": policy,
        "r": (policy + rng.normal(0, 2.0, n)).astype(np.float32),
        "pkl": policy_kl,
        "rkl": (policy_kl - kl_shift + rng.normal(0, 0.5, n)).astype(np.float32),
        "label": (rng.random(n) < 0.5).astype(np.float32),
        "len": lengths,
        "g": rng.normal(0, 1, n).astype(np.float32),
    }


def unpaired_inputs(x, mask, batch=None) -> UnpairedInputs:
    def padded(values):
        values = np.array(values, dtype=np.float32)
        values[mask == 0] = np.nan
        return jnp.asarray(values)

    return UnpairedInputs(
        policy_logps=padded(x["p"]),
        ref_logps=padded(x["r"]),
        policy_kl_logps=padded(x["pkl"]),
        ref_kl_logps=padded(x["rkl"]),
        label=jnp.asarray(x["label"]),
        lengths=jnp.asarray(x["len"]),
        logits_mean=padded(x["g"]),
        mask=jnp.asarray(mask),
        batch=batch or {},
    )


def reference_kto(x, mask, cfg, z0=None):
    real = mask > 0
    if z0 is None:
        z0 = max(np.mean((x["pkl"] - x["rkl"])[real]), 0.0)
    r = x["p"] - x["r"]
    desirable = cfg.desirable_weight * (1 - sigmoid(cfg.beta * (r - z0)))
    undesirable = cfg.undesirable_weight * (1 - sigmoid(cfg.beta * (z0 - r)))
    return np.where(x["label"] > 0, desirable, undesirable), z0


@pytest.mark.parametrize("kl_shift", [1.0, -3.0], ids=["kl-positive", "kl-clamped"])
def test_kto_matches_numpy(kl_shift):
    rng = np.random.default_rng(5)
    x, mask = unpaired_arrays(rng, kl_shift=kl_shift), random_mask(rng)
    cfg = LossConfig(name="kto", beta=0.3, desirable_weight=1.33, undesirable_weight=0.8)
    loss, metrics = compute_loss(unpaired_inputs(x, mask), cfg)
    x64 = as_float64(x)
    per_example, z0 = reference_kto(x64, mask, cfg)
    assert (z0 > 0) == (kl_shift > 0)
    np.testing.assert_allclose(loss, masked_mean(per_example, mask), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(metrics["kl"], z0, rtol=RTOL, atol=ATOL)
    desirable, undesirable = mask * x64["label"], mask * (1 - x64["label"])
    rewards = cfg.beta * (x64["p"] - x64["r"])
    expected = {
        "rewards/chosen": masked_mean(rewards, desirable),
        "rewards/rejected": masked_mean(rewards, undesirable),
        "rewards/margins": masked_mean(rewards, desirable) - masked_mean(rewards, undesirable),
        "logps/chosen": masked_mean(x64["p"], desirable),
        "logps/rejected": masked_mean(x64["p"], undesirable),
        "logits/chosen": masked_mean(x64["g"], desirable * x64["len"]),
        "logits/rejected": masked_mean(x64["g"], undesirable * x64["len"]),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


def test_kto_kl_baseline_from_batch_and_without_kl_completions():
    rng = np.random.default_rng(6)
    x, mask = unpaired_arrays(rng), random_mask(rng)
    cfg = LossConfig(name="kto")
    loss, metrics = compute_loss(unpaired_inputs(x, mask, batch={"kl_baseline": 0.4}), cfg)
    per_example, _ = reference_kto(as_float64(x), mask, cfg, z0=0.4)
    np.testing.assert_allclose(loss, masked_mean(per_example, mask), rtol=RTOL)
    np.testing.assert_allclose(metrics["kl"], 0.4, rtol=RTOL)
    no_kl = dataclasses.replace(unpaired_inputs(x, mask), policy_kl_logps=None, ref_kl_logps=None)
    loss, metrics = compute_loss(no_kl, cfg)
    per_example, _ = reference_kto(as_float64(x), mask, cfg, z0=0.0)
    np.testing.assert_allclose(loss, masked_mean(per_example, mask), rtol=RTOL)
    assert metrics["kl"] == 0.0


def reward_inputs(rng, mask, margin=None):
    chosen = rng.normal(0.5, 2.0, N).astype(np.float32)
    rejected = rng.normal(0.0, 2.0, N).astype(np.float32)
    batch = {} if margin is None else {"margin": jnp.asarray(margin.reshape(4, N // 4))}  # packed [R, K]
    inputs = RewardInputs(chosen_rewards=jnp.asarray(chosen), rejected_rewards=jnp.asarray(rejected),
                          mask=jnp.asarray(mask), batch=batch)
    return inputs, chosen.astype(np.float64), rejected.astype(np.float64)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_bradley_terry_matches_numpy(with_margin, center):
    rng = np.random.default_rng(7)
    mask = random_mask(rng)
    margin = rng.uniform(0, 1, N).astype(np.float32) if with_margin else None
    inputs, rc, rr = reward_inputs(rng, mask, margin)
    cfg = LossConfig(name="bradley_terry", center_rewards_coefficient=center)
    loss, metrics = compute_loss(inputs, cfg)
    per_example = -log_sigmoid(rc - rr - (margin if with_margin else 0.0)) + (center or 0.0) * (rc + rr) ** 2
    np.testing.assert_allclose(loss, masked_mean(per_example, mask), rtol=RTOL, atol=ATOL)
    real = mask > 0
    both = np.concatenate([rc[real], rr[real]])
    expected = {
        "accuracy": np.mean(rc[real] > rr[real]),
        "margin": np.mean((rc - rr)[real]),
        "mean_reward": both.mean(),
        "min_reward": both.min(),
        "max_reward": both.max(),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


# --------------------------------------------------------------------------
# Masking, gradients, combinations, accumulation.
# --------------------------------------------------------------------------

ALL_CONFIGS = [LossConfig(name=name, **opts) for name, opts in PAIR_CASES] + [
    LossConfig(name="kto"),
    LossConfig(name="bradley_terry", center_rewards_coefficient=0.1),
]


def inputs_for(cfg: LossConfig, rng, mask):
    if cfg.kind == "pair":
        return pair_inputs(pair_arrays(rng), mask)
    if cfg.kind == "unpaired":
        return unpaired_inputs(unpaired_arrays(rng), mask)
    return reward_inputs(rng, mask, rng.uniform(0, 1, N).astype(np.float32))[0]


def differentiable_fields(inputs):
    if isinstance(inputs, PreferenceInputs):
        return ("policy_chosen_logps", "policy_rejected_logps")
    if isinstance(inputs, UnpairedInputs):
        return ("policy_logps",)
    return ("chosen_rewards", "rejected_rewards")


def gradients(cfg, inputs, of="mean"):
    """d loss / d each differentiable field, ``{field: [N]}``."""
    loss_fn = build_loss(cfg)
    fields = differentiable_fields(inputs)

    def objective(values):
        out = loss_fn(dataclasses.replace(inputs, **dict(zip(fields, values))))
        return out.mean_loss() if of == "mean" else out.loss.total

    grads = jax.grad(objective)(tuple(getattr(inputs, f) for f in fields))
    return dict(zip(fields, grads))


def test_every_loss_runs_under_jit_as_eagerly():
    rng = np.random.default_rng(20)
    losses = [(cfg, build_loss(cfg)) for cfg in ALL_CONFIGS]

    @jax.jit
    def run_all(inputs_by_kind):  # one compilation for the whole catalogue
        return [loss_fn(inputs_by_kind[cfg.kind]).result() for cfg, loss_fn in losses]

    for mask in (random_mask(rng), np.zeros(N, np.float32)):
        inputs_by_kind = {cfg.kind: inputs_for(cfg, rng, mask) for cfg in ALL_CONFIGS}
        for (cfg, loss_fn), (loss, metrics) in zip(losses, run_all(inputs_by_kind)):
            eager_loss, eager_metrics = loss_fn(inputs_by_kind[cfg.kind]).result()
            np.testing.assert_allclose(loss, eager_loss, rtol=RTOL, err_msg=str(cfg.name))
            assert metrics.keys() == eager_metrics.keys()
            for key in metrics:
                np.testing.assert_allclose(metrics[key], eager_metrics[key], rtol=RTOL, atol=ATOL, err_msg=key)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.name}")
def test_all_masked_batch_gives_zero_and_no_nan(cfg):
    rng = np.random.default_rng(8)
    inputs = inputs_for(cfg, rng, np.zeros(N, np.float32))
    loss, metrics = build_loss(cfg)(inputs).result()
    assert loss == 0.0
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for grad in gradients(cfg, inputs).values():
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.name}")
def test_padding_gets_no_gradient_and_changes_nothing(cfg):
    rng = np.random.default_rng(9)
    mask = random_mask(rng)
    inputs = inputs_for(cfg, rng, mask)  # NaN garbage in padded slots
    grads = gradients(cfg, inputs)
    for grad in grads.values():
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)
    # Dropping the padded slots altogether gives the same loss.
    keep = np.flatnonzero(mask)
    compact = jax.tree.map(lambda v: v[keep] if getattr(v, "shape", ()) == (N,) else v, inputs)
    if isinstance(compact, RewardInputs):
        compact = dataclasses.replace(compact, batch={"margin": inputs.batch["margin"].reshape(-1)[keep]})
    np.testing.assert_allclose(build_loss(cfg)(compact).mean_loss(), build_loss(cfg)(inputs).mean_loss(), rtol=RTOL)


# Losses whose intent is to raise the chosen completion's likelihood (apo_down
# lowers both on purpose; at policy == reference its chosen gradient is 0).
RAISES_CHOSEN = [name for name in BUILTIN_PAIR if name != "apo_down"]
LOWERS_REJECTED = [name for name in BUILTIN_PAIR if name != "sft"]


@pytest.mark.parametrize("name", BUILTIN_PAIR)
def test_pair_gradient_signs_at_policy_equal_reference(name):
    rng = np.random.default_rng(10)
    x, mask = pair_arrays(rng), np.ones(N, np.float32)
    x["rc"], x["rr"] = x["pc"], x["pr"]  # the first step of training
    grads = gradients(LossConfig(name=name, beta=0.1), pair_inputs(x, mask))
    chosen, rejected = np.asarray(grads["policy_chosen_logps"]), np.asarray(grads["policy_rejected_logps"])
    if name in RAISES_CHOSEN:
        assert np.all(chosen < 0), chosen
    if name in LOWERS_REJECTED:
        assert np.all(rejected > 0), rejected
    if name == "sft":
        np.testing.assert_array_equal(rejected, 0.0)
    if name == "apo_down":
        np.testing.assert_allclose(chosen, 0.0, atol=1e-7)


def test_kto_and_bradley_terry_gradient_signs():
    rng = np.random.default_rng(11)
    x, mask = unpaired_arrays(rng), np.ones(N, np.float32)
    grad = np.asarray(gradients(LossConfig(name="kto"), unpaired_inputs(x, mask))["policy_logps"])
    assert np.all(grad[x["label"] > 0] < 0) and np.all(grad[x["label"] == 0] > 0)
    inputs = reward_inputs(rng, mask)[0]
    grads = gradients(LossConfig(name="bradley_terry"), inputs)
    assert np.all(np.asarray(grads["chosen_rewards"]) < 0) and np.all(np.asarray(grads["rejected_rewards"]) > 0)


def test_estimated_baselines_carry_no_gradient():
    """KTO's z0 and BCO's delta are constants to the optimiser (stop-gradient)."""
    rng = np.random.default_rng(19)
    x, mask = unpaired_arrays(rng), random_mask(rng)
    inputs = unpaired_inputs(x, mask)
    loss_fn = build_loss(LossConfig(name="kto"))
    grad = jax.grad(lambda kl: loss_fn(dataclasses.replace(inputs, policy_kl_logps=kl)).mean_loss())(
        inputs.policy_kl_logps
    )
    np.testing.assert_array_equal(grad, 0.0)

    x, mask = pair_arrays(rng), random_mask(rng)
    inputs = pair_inputs(x, mask)
    cfg = LossConfig(name="bco_pair")
    delta = build_loss(cfg)(inputs).metrics()["bco/delta"]
    with_fixed_delta = dataclasses.replace(inputs, batch={"bco_delta": delta})
    for field, grad in gradients(cfg, inputs).items():
        np.testing.assert_allclose(grad, gradients(cfg, with_fixed_delta)[field], rtol=RTOL, atol=1e-8)


def test_combination_is_the_weighted_sum_and_reports_components():
    rng = np.random.default_rng(12)
    inputs = pair_inputs(pair_arrays(rng), random_mask(rng))
    sigmoid_loss, _ = compute_loss(inputs, LossConfig(name="sigmoid"))
    sft_loss, _ = compute_loss(inputs, LossConfig(name="sft"))
    rpo = LossConfig(name=["sigmoid", "sft"], weights=[1.0, 0.5])
    loss, metrics = compute_loss(inputs, rpo)
    np.testing.assert_allclose(loss, sigmoid_loss + 0.5 * sft_loss, rtol=RTOL)
    np.testing.assert_allclose(metrics["loss/sigmoid"], sigmoid_loss, rtol=RTOL)
    np.testing.assert_allclose(metrics["loss/sft"], sft_loss, rtol=RTOL)
    # TRL's rpo_alpha is the same combination.
    rpo_alpha_loss, rpo_alpha_metrics = compute_loss(inputs, LossConfig(name="sigmoid", rpo_alpha=0.5))
    np.testing.assert_allclose(rpo_alpha_loss, loss, rtol=RTOL)
    assert rpo_alpha_metrics.keys() == metrics.keys()
    # Rewards stay DPO's implicit rewards, not scaled by the weights.
    _, sigmoid_metrics = compute_loss(inputs, LossConfig(name="sigmoid"))
    np.testing.assert_allclose(metrics["rewards/chosen"], sigmoid_metrics["rewards/chosen"], rtol=RTOL)
    assert "loss/sigmoid" not in sigmoid_metrics


def split(tree, index):
    return jax.tree.map(lambda v: v[index] if getattr(v, "shape", ())[:1] == (N,) else v, tree)


ACCUMULATION_CASES = [
    (LossConfig(name="sigmoid", label_smoothing=0.1), {}),
    (LossConfig(name=["ipo", "sft"], weights=[1.0, 0.3]), {}),
    (LossConfig(name="orpo"), {}),
    (LossConfig(name="bco_pair"), {"bco_delta": jnp.float32(-0.2)}),
    (LossConfig(name="kto", desirable_weight=2.0), {"kl_baseline": jnp.float32(0.5)}),
    (LossConfig(name="bradley_terry", center_rewards_coefficient=0.05), {}),
]


@pytest.mark.parametrize("cfg,extra", ACCUMULATION_CASES, ids=["+".join(c.names) for c, _ in ACCUMULATION_CASES])
def test_micro_batches_combine_exactly(cfg, extra):
    rng = np.random.default_rng(13)
    mask = random_mask(rng)
    mask[3:6] = 0.0  # the halves hold different numbers of real examples
    inputs = inputs_for(cfg, rng, mask)
    if isinstance(inputs, RewardInputs):
        inputs = dataclasses.replace(inputs, batch={"margin": inputs.batch["margin"].reshape(-1)})
    inputs = dataclasses.replace(inputs, batch={**inputs.batch, **extra})
    halves = [split(inputs, np.arange(0, N // 2)), split(inputs, np.arange(N // 2, N))]
    assert float(halves[0].mask.sum()) != float(halves[1].mask.sum())
    loss_fn = build_loss(cfg)

    whole_loss, whole_metrics = loss_fn(inputs).result()
    merged = merge_outputs([loss_fn(half) for half in halves])
    loss, metrics = merged.result()
    np.testing.assert_allclose(loss, whole_loss, rtol=RTOL)
    assert metrics.keys() == whole_metrics.keys()
    for key in metrics:
        np.testing.assert_allclose(metrics[key], whole_metrics[key], rtol=RTOL, atol=ATOL, err_msg=key)

    # The same through a stacked (lax.scan-style) output.
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[loss_fn(half) for half in halves])
    np.testing.assert_allclose(stacked.merge_leading_axis().mean_loss(), whole_loss, rtol=RTOL)

    # Gradients: summed gradients of loss.total, scaled once, equal the whole batch's.
    whole_grads = gradients(cfg, inputs)
    half_grads = [gradients(cfg, half, of="total") for half in halves]
    for field, whole_grad in whole_grads.items():
        accumulated = np.concatenate([g[field] for g in half_grads]) * merged.grad_scale()
        np.testing.assert_allclose(accumulated, whole_grad, rtol=RTOL, atol=1e-8, err_msg=field)


def test_merging_all_masked_micro_batch_changes_nothing():
    rng = np.random.default_rng(14)
    cfg = LossConfig(name="sigmoid")
    x, mask = pair_arrays(rng), random_mask(rng)
    out = build_loss(cfg)(pair_inputs(x, mask))
    empty = build_loss(cfg)(pair_inputs(x, np.zeros(N, np.float32)))
    loss, metrics = out.merge(empty).result()
    assert loss == out.mean_loss()
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx({k: float(v) for k, v in out.metrics().items()})
    assert empty.grad_scale() == 0.0


# --------------------------------------------------------------------------
# Config validation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beta": 0.0}, r"loss\.beta must be > 0, got 0\.0"),
        ({"beta": -1.0}, r"loss\.beta must be > 0"),
        ({"name": "robust", "label_smoothing": 0.5}, r"label_smoothing must lie in \[0, 0\.5\) for robust.*1 - 2"),
        ({"name": "sigmoid", "label_smoothing": 0.7}, r"label_smoothing must lie in \[0, 0\.5\) for sigmoid"),
        ({"name": "sigmoid", "label_smoothing": -0.1}, r"label_smoothing must lie in \[0, 0\.5\)"),
        ({"name": "hinge", "label_smoothing": 0.1}, r"label_smoothing=0\.1 but hinge ignores it"),
        ({"name": ["ipo", "sft"], "label_smoothing": 0.1}, r"ipo, sft ignores it"),
        ({"name": "sigmod"}, r"unknown loss 'sigmod'; registered losses: .*apo_down.*sigmoid_norm.*Did you mean 'sigmoid'\?"),
        ({"name": ["sigmoid", "sft"], "weights": [1.0]}, r"loss\.weights has 1 entries but loss\.name has 2"),
        ({"name": ["sigmoid", "sigmoid"]}, r"lists a loss twice"),
        ({"name": ["sigmoid", "sft"], "weights": [1.0, "half"]}, r"loss\.weights must hold numbers, got 'half'"),
        ({"name": ["sigmoid", "kto"]}, r"different inputs: sigmoid \(pair\), kto \(unpaired\)"),
        ({"name": "sft", "rpo_alpha": 1.0}, r"rpo_alpha adds an 'sft' term itself"),
        ({"rpo_alpha": -1.0}, r"rpo_alpha must be >= 0"),
        ({"desirable_weight": 0.0}, r"desirable_weight and loss\.undesirable_weight must be > 0"),
        ({"beta": float("nan")}, r"loss\.beta must be a finite number"),
        ({"name": []}, r"loss\.name must be a loss name or a non-empty list"),
        ({"name": "no_such_module_xyz:fn"}, r"cannot import module 'no_such_module_xyz'"),
    ],
)
def test_config_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


def test_config_accepts_trl_style_settings_and_reports_kind_and_reference():
    assert LossConfig(name="robust", label_smoothing=0.49).components == (("robust", 1.0),)
    assert LossConfig(name=["sigmoid", "sft"], weights=[1, 0.5]).weights == (1.0, 0.5)
    assert LossConfig(name="sigmoid", rpo_alpha=0.2).components == (("sigmoid", 1.0), ("sft", 0.2))
    assert LossConfig(name=["simpo", "sft"], label_smoothing=0.1).needs_reference is False
    assert LossConfig(name="sigmoid").needs_reference is True
    assert LossConfig(name=["sft", "ipo"]).needs_reference is True
    assert LossConfig(name="kto").kind == "unpaired"
    assert LossConfig(name="bradley_terry").kind == "reward"
    assert get_loss("orpo").needs_reference is False and get_loss("ipo").needs_reference is True


def test_reference_loss_without_reference_and_wrong_bundle_are_errors():
    rng = np.random.default_rng(15)
    inputs = pair_inputs(pair_arrays(rng), random_mask(rng), reference=False)
    with pytest.raises(ValueError, match=r"loss 'sigmoid' needs reference log-probs"):
        build_loss(LossConfig(name="sigmoid"))(inputs)
    with pytest.raises(TypeError, match=r"loss kto takes UnpairedInputs, got PreferenceInputs"):
        build_loss(LossConfig(name="kto"))(inputs)


# --------------------------------------------------------------------------
# Registry and user losses.
# --------------------------------------------------------------------------


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    yield
    for module in ("user_losses_helper", "mypkg", "mypkg.losses"):
        sys.modules.pop(module, None)


def test_register_loss_decorator(clean_registry):
    assert jaxalign.register_loss is register_loss

    @register_loss("test_double_sigmoid", needs_reference=True, uses_label_smoothing=True)
    def double_sigmoid(inputs, cfg):
        return 2.0 * get_loss("sigmoid").fn(inputs, cfg)

    assert "test_double_sigmoid" in list_losses()
    spec = get_loss("test_double_sigmoid")
    assert spec.fn is double_sigmoid and spec.kind == "pair" and spec.needs_reference
    rng = np.random.default_rng(16)
    inputs = pair_inputs(pair_arrays(rng), random_mask(rng))
    cfg = LossConfig(name="test_double_sigmoid", label_smoothing=0.1)
    np.testing.assert_allclose(
        spec(inputs, cfg)[0], 2.0 * compute_loss(inputs, LossConfig(name="sigmoid", label_smoothing=0.1))[0], rtol=RTOL
    )
    # Registering the same function again is harmless; another one under the name is not.
    register_loss("test_double_sigmoid", uses_label_smoothing=True)(double_sigmoid)
    with pytest.raises(ValueError, match=r"'test_double_sigmoid' is already registered"):
        register_loss("test_double_sigmoid")(lambda inputs, cfg: inputs.mask)
    with pytest.raises(ValueError, match=r"kind must be one of"):
        register_loss("test_bad_kind", kind="tabular")
    with pytest.raises(ValueError, match=r"contain no ':'"):
        register_loss("a:b")


def test_user_loss_by_module_path(clean_registry):
    rng = np.random.default_rng(17)
    x, mask = pair_arrays(rng), random_mask(rng)

    registered = get_loss("user_losses_helper:margin_loss")
    assert registered.name == "test_user_margin_loss" and registered.needs_reference is False
    assert get_loss("test_user_margin_loss") is registered
    cfg = LossConfig(name="user_losses_helper:margin_loss", beta=0.5, options={"margin": 2.0})
    assert cfg.needs_reference is False
    loss, metrics = compute_loss(pair_inputs(x, mask, reference=False), cfg)
    x64 = as_float64(x)
    gap = x64["pc"] - x64["pr"] - 2.0
    np.testing.assert_allclose(loss, masked_mean(-log_sigmoid(0.5 * gap), mask), rtol=RTOL)
    np.testing.assert_allclose(metrics["user/gap"], masked_mean(gap, mask), rtol=RTOL)

    plain = get_loss("user_losses_helper:unregistered_loss")
    assert plain.name == "user_losses_helper:unregistered_loss"
    assert plain.needs_reference is True and plain.kind == "pair"  # the decorator's defaults
    combined = LossConfig(name=["sigmoid", "user_losses_helper:unregistered_loss"], weights=[1.0, 2.0])
    loss, metrics = compute_loss(pair_inputs(x, mask), combined)
    expected = reference_pair_loss("sigmoid", x64, combined, mask > 0) + 2.0 * (
        0.1 * ((x64["pc"] - x64["rc"]) - (x64["pr"] - x64["rr"])) - 1.0
    ) ** 2
    np.testing.assert_allclose(loss, masked_mean(expected, mask), rtol=RTOL)
    assert "loss/user_losses_helper:unregistered_loss" in metrics

    with pytest.raises(ValueError, match=r"has no attribute 'missing'"):
        get_loss("user_losses_helper:missing")
    with pytest.raises(ValueError, match=r"'NOT_CALLABLE' is not callable"):
        get_loss("user_losses_helper:NOT_CALLABLE")
    with pytest.raises(ValueError, match=r"expected 'package.module:function'"):
        get_loss("user_losses_helper:")


def test_user_loss_returning_a_wrong_shape_is_an_error(clean_registry):
    @register_loss("test_wrong_shape", needs_reference=False)
    def wrong_shape(inputs, cfg):
        return inputs.policy_chosen_logps[:, None]

    rng = np.random.default_rng(18)
    with pytest.raises(ValueError, match=r"returned per-example losses of shape \(16, 1\); expected \(16,\)"):
        compute_loss(pair_inputs(pair_arrays(rng), random_mask(rng)), LossConfig(name="test_wrong_shape"))


# --------------------------------------------------------------------------
# docs/losses.md: the worked example runs.
# --------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "losses.md"


def test_docs_worked_example_runs(clean_registry, tmp_path):
    """Python blocks whose first line is ``# path/to/file.py`` are written to that
    file under a temporary root on sys.path; the other python blocks run in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/losses.md has no python blocks"
    sys.path.insert(0, str(tmp_path))
    try:
        namespace: dict = {}
        for block in blocks:
            first_line = block.splitlines()[0]
            if match := re.fullmatch(r"# ([\w/]+\.py)", first_line.strip()):
                target = tmp_path / match.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block)
                (target.parent / "__init__.py").touch()
            else:
                exec(compile(block, str(DOCS), "exec"), namespace)
    finally:
        sys.path.remove(str(tmp_path))
    assert "my_loss" in list_losses()
    assert isinstance(namespace.get("out"), LossOutput)
