"""Losses for human feedback against closed forms: weights (exact weighted means, also across
micro-batches), soft labels (preference strength), pointwise rating losses, Plackett-Luce."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import (
    ListwiseInputs,
    LossConfig,
    PointwiseInputs,
    PreferenceInputs,
    RewardInputs,
    build_loss,
    build_per_example_loss,
    get_loss,
    merge_outputs,
)
from jaxalign.losses.pointwise import OrdinalThresholds, ordinal_log_probs, thresholds


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


RNG = np.random.default_rng(0)
N = 12
MASK = np.array([1.0] * 10 + [0.0] * 2)
CHOSEN, REJECTED = RNG.normal(size=N), RNG.normal(size=N)
WEIGHTS = np.concatenate([RNG.uniform(0.0, 2.0, 10), [5.0, 5.0]])  # padding weights must not count
STRENGTH = np.concatenate([RNG.uniform(0.0, 1.0, 10), [0.3, 0.3]])


def reward_inputs(batch, mask=MASK, chosen=CHOSEN, rejected=REJECTED):
    return RewardInputs(chosen_rewards=jnp.asarray(chosen, jnp.float32), rejected_rewards=jnp.asarray(rejected, jnp.float32),
                        mask=jnp.asarray(mask), batch={k: jnp.asarray(v, jnp.float32) for k, v in batch.items()})


def pair_inputs(batch):
    policy_c, policy_r = RNG.normal(-10, 2, N), RNG.normal(-10, 2, N)
    ref_c, ref_r = RNG.normal(-10, 2, N), RNG.normal(-10, 2, N)
    as_array = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    inputs = PreferenceInputs(
        policy_chosen_logps=as_array(policy_c), policy_rejected_logps=as_array(policy_r),
        ref_chosen_logps=as_array(ref_c), ref_rejected_logps=as_array(ref_r),
        chosen_lengths=as_array(np.full(N, 5.0)), rejected_lengths=as_array(np.full(N, 6.0)), mask=jnp.asarray(MASK),
        batch={k: as_array(v) for k, v in batch.items()})
    return inputs, (policy_c - ref_c) - (policy_r - ref_r)


def test_weight_column_gives_the_exact_weighted_mean_and_merges_across_micro_batches():
    loss = build_loss(LossConfig(name="bradley_terry"))
    per_example = -log_sigmoid(CHOSEN - REJECTED)
    real = MASK > 0
    expected = np.sum((WEIGHTS * per_example)[real]) / np.sum(WEIGHTS[real])
    out = loss(reward_inputs({"weight": WEIGHTS}))
    np.testing.assert_allclose(out.mean_loss(), expected, rtol=1e-5)
    # Metrics describe the data: accuracy stays the plain share over examples.
    np.testing.assert_allclose(out.metrics()["accuracy"], np.mean((CHOSEN > REJECTED)[real]), rtol=1e-6)
    # Two micro-batches with different weight sums merge to exactly the full batch's loss and gradient.
    halves = [slice(0, 4), slice(4, N)]

    def total(shift, part):
        inputs = reward_inputs({"weight": WEIGHTS[part]}, MASK[part], CHOSEN[part] + shift, REJECTED[part])
        out = loss(inputs)
        return out.loss.total, out

    grads, outs = zip(*(jax.grad(total, has_aux=True)(0.0, part) for part in halves))
    merged = merge_outputs(outs)
    np.testing.assert_allclose(merged.mean_loss(), expected, rtol=1e-5)
    full_grad = jax.grad(lambda shift: loss(reward_inputs({"weight": WEIGHTS}, MASK, CHOSEN + shift, REJECTED)).mean_loss())(0.0)
    np.testing.assert_allclose(sum(grads) * merged.grad_scale(), full_grad, rtol=1e-5)
    # Scaling every weight changes nothing; per-example columns carry the weight.
    np.testing.assert_allclose(loss(reward_inputs({"weight": 3 * WEIGHTS})).mean_loss(), expected, rtol=1e-5)
    columns = build_per_example_loss(LossConfig(name="bradley_terry"))(reward_inputs({"weight": WEIGHTS}))
    np.testing.assert_allclose(columns["weight"][:10], WEIGHTS[:10], rtol=1e-6)


def test_bradley_terry_soft_labels_are_binary_cross_entropy_and_p1_is_exactly_bradley_terry():
    loss = build_loss(LossConfig(name="bradley_terry"))
    d = CHOSEN - REJECTED
    expected = -STRENGTH * log_sigmoid(d) - (1 - STRENGTH) * log_sigmoid(-d)
    got = loss(reward_inputs({"preference_strength": STRENGTH}))
    np.testing.assert_allclose(got.mean_loss(), expected[:10].mean(), rtol=1e-5)
    hard = loss(reward_inputs({"preference_strength": np.ones(N)}))
    plain = loss(reward_inputs({}))
    assert float(hard.mean_loss()) == float(plain.mean_loss())


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_takes_per_pair_label_smoothing_from_the_strength_column(eps):
    beta = 0.1
    inputs, logits = pair_inputs({"preference_strength": STRENGTH})
    flip = 1 - (STRENGTH * (1 - eps) + (1 - STRENGTH) * eps)
    expected = -(1 - flip) * log_sigmoid(beta * logits) - flip * log_sigmoid(-beta * logits)
    got = build_loss(LossConfig(name="sigmoid", beta=beta, label_smoothing=eps))(inputs)
    np.testing.assert_allclose(got.mean_loss(), expected[:10].mean(), rtol=1e-5)
    assert get_loss("simpo").soft_labels and get_loss("cpo").soft_labels and not get_loss("robust").soft_labels


def test_a_loss_that_ignores_strengths_refuses_them():
    inputs, _ = pair_inputs({"preference_strength": STRENGTH})
    with pytest.raises(ValueError, match="preference strengths .* which loss hinge ignores; soft labels work with .*ipo"):
        build_loss(LossConfig(name="hinge"))(inputs)


def average_log_ratio_gap(inputs):
    """IPO's d: per-token log-ratios, chosen minus rejected."""
    c = (np.asarray(inputs.policy_chosen_logps) - np.asarray(inputs.ref_chosen_logps)) / 5.0
    r = (np.asarray(inputs.policy_rejected_logps) - np.asarray(inputs.ref_rejected_logps)) / 6.0
    return c - r


def test_ipo_soft_labels_regress_onto_its_target_for_a_preference_probability():
    beta = 0.2
    inputs, _ = pair_inputs({"preference_strength": STRENGTH})
    d = average_log_ratio_gap(inputs)
    got = build_loss(LossConfig(name="ipo", beta=beta))(inputs)
    np.testing.assert_allclose(got.mean_loss(), ((d - (STRENGTH - 0.5) / beta) ** 2)[:10].mean(), rtol=1e-5)
    hard = dataclasses.replace(inputs, batch={"preference_strength": jnp.ones(N)})
    plain = dataclasses.replace(inputs, batch={})
    assert float(build_loss(LossConfig(name="ipo", beta=beta))(hard).mean_loss()) == pytest.approx(
        float(build_loss(LossConfig(name="ipo", beta=beta))(plain).mean_loss()), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_simpo_and_cpo_take_per_pair_label_smoothing_from_the_strength_column(eps):
    beta, gamma, alpha = 2.0, 0.5, 1.0
    inputs, _ = pair_inputs({"preference_strength": STRENGTH})
    c, r = np.asarray(inputs.policy_chosen_logps), np.asarray(inputs.policy_rejected_logps)
    flip = 1 - (STRENGTH * (1 - eps) + (1 - STRENGTH) * eps)
    z = beta * (c / 5.0 - r / 6.0) - gamma
    simpo = -(1 - flip) * log_sigmoid(z) - flip * log_sigmoid(-z)
    got = build_loss(LossConfig(name="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps))(inputs)
    np.testing.assert_allclose(got.mean_loss(), simpo[:10].mean(), rtol=1e-5)
    z = 0.1 * (c - r)
    cpo = -(1 - flip) * log_sigmoid(z) - flip * log_sigmoid(-z) + alpha * (-c / 5.0)
    got = build_loss(LossConfig(name="cpo", beta=0.1, cpo_alpha=alpha, label_smoothing=eps))(inputs)
    np.testing.assert_allclose(got.mean_loss(), cpo[:10].mean(), rtol=1e-5)


def pointwise(scores, batch, params=None):
    return PointwiseInputs(rewards=jnp.asarray(scores, jnp.float32), mask=jnp.asarray(MASK),
                           batch={k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}, params=params or {})


def test_rating_regression_and_acceptability_formulas():
    scores, rating, label = RNG.normal(size=N), RNG.uniform(-1, 1, N), (RNG.random(N) > 0.5).astype(float)
    got = build_loss(LossConfig(name="rating_regression"))(pointwise(scores, {"rating": rating}))
    np.testing.assert_allclose(got.mean_loss(), np.mean(((scores - rating) ** 2)[:10]), rtol=1e-5)
    got = build_loss(LossConfig(name="acceptability"))(pointwise(scores, {"label": label}))
    bce = -label * log_sigmoid(scores) - (1 - label) * log_sigmoid(-scores)
    np.testing.assert_allclose(got.mean_loss(), bce[:10].mean(), rtol=1e-5)
    np.testing.assert_allclose(got.metrics()["accuracy"], np.mean(((scores > 0) == (label > 0.5))[:10]), rtol=1e-6)


def test_ordinal_is_the_cumulative_link_likelihood_with_ordered_thresholds():
    params = OrdinalThresholds().init(5)
    theta = np.asarray(thresholds(params["ordinal_thresholds"]), np.float64)
    np.testing.assert_allclose(theta, np.log(np.array([1, 2, 3, 4]) / np.array([4, 3, 2, 1])), rtol=1e-5)
    assert OrdinalThresholds().export(params)["ordinal_thresholds"] == pytest.approx(theta.tolist(), rel=1e-5)
    raw = params["ordinal_thresholds"] + jnp.asarray(RNG.normal(0, 1, 4), jnp.float32)  # any raw values stay ordered
    theta = np.asarray(thresholds(raw), np.float64)
    assert np.all(np.diff(theta) > 0)
    scores, level = RNG.normal(0, 2, N), RNG.integers(0, 5, N).astype(float)
    cumulative = np.concatenate([np.zeros((N, 1)), sigmoid(theta[None] - scores[:, None]), np.ones((N, 1))], axis=1)
    probs = np.diff(cumulative, axis=1)  # [N, 5]
    np.testing.assert_allclose(np.exp(ordinal_log_probs(jnp.asarray(scores, jnp.float32), jnp.asarray(theta, jnp.float32))),
                               probs, atol=1e-5)
    got = build_loss(LossConfig(name="ordinal"))(pointwise(scores, {"rating_level": level}, {"ordinal_thresholds": raw}))
    expected = -np.log(probs[np.arange(N), level.astype(int)])
    np.testing.assert_allclose(got.mean_loss(), expected[:10].mean(), rtol=1e-4)
    # The thresholds get gradients (they train with the model).
    grad = jax.grad(lambda r: build_loss(LossConfig(name="ordinal"))(
        pointwise(scores, {"rating_level": level}, {"ordinal_thresholds": r})).mean_loss())(raw)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def listwise(scores, present):
    return ListwiseInputs(rewards=jnp.asarray(scores, jnp.float32), reply_mask=jnp.asarray(present, jnp.float32),
                          mask=jnp.asarray(MASK))


def test_plackett_luce_with_two_replies_is_exactly_bradley_terry():
    scores = np.stack([CHOSEN, REJECTED], axis=1)
    pl = build_loss(LossConfig(name="plackett_luce"))(listwise(scores, np.ones((N, 2))))
    bt = build_loss(LossConfig(name="bradley_terry"))(reward_inputs({}))
    np.testing.assert_allclose(pl.mean_loss(), bt.mean_loss(), rtol=1e-6)
    np.testing.assert_allclose(pl.metrics()["accuracy"], bt.metrics()["accuracy"], rtol=1e-6)


def test_plackett_luce_formula_with_rankings_of_different_lengths():
    scores = RNG.normal(size=(N, 4))
    present = np.ones((N, 4))
    present[::3, 3] = 0  # some rankings have 3 replies
    present[1, 2:] = 0  # one has 2
    expected = []
    for s, p in zip(scores, present):
        s = s[p > 0]
        expected.append(sum(np.logaddexp.reduce(s[k:]) - s[k] for k in range(len(s) - 1)))
    got = build_loss(LossConfig(name="plackett_luce"))(listwise(np.where(present > 0, scores, 123.0), present))
    np.testing.assert_allclose(got.mean_loss(), np.mean(expected[:10]), rtol=1e-5)
    metrics = got.metrics()
    pair_accuracy = [np.mean([s[i] > s[j] for i in range(int(p.sum())) for j in range(i + 1, int(p.sum()))])
                     for s, p in zip(scores, present)]
    np.testing.assert_allclose(metrics["accuracy"], np.mean(pair_accuracy[:10]), rtol=1e-5)
    grad = jax.grad(lambda x: build_loss(LossConfig(name="plackett_luce"))(listwise(x, present)).mean_loss())(
        jnp.asarray(scores, jnp.float32))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[present == 0] == 0)
