"""PPO's pure pieces against direct NumPy computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import ppo


def _case(seed=0, batch=3, length=6):
    rng = np.random.default_rng(seed)
    lengths = np.array([6, 3, 1])[:batch]
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    return rng, mask


def _gae_loop(rewards, values, mask, gamma, lam):
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages, (advantages + values) * mask


def test_gae_matches_the_recursion():
    rng, mask = _case()
    rewards, values = rng.normal(size=mask.shape).astype(np.float32), rng.normal(size=mask.shape).astype(np.float32)
    advantages, returns = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=0.99, lam=0.95)
    want_adv, want_ret = _gae_loop(rewards, values * mask, mask, 0.99, 0.95)
    np.testing.assert_allclose(advantages, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns, want_ret, rtol=1e-5, atol=1e-6)


def test_whiten_over_masked_entries():
    rng, mask = _case(1)
    values = rng.normal(3.0, 2.0, size=mask.shape).astype(np.float32)
    real = values[mask > 0]
    want = (values - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8) * mask
    np.testing.assert_allclose(ppo.whiten(jnp.asarray(values), jnp.asarray(mask)), want, rtol=1e-5, atol=1e-6)


def test_kl_estimators():
    logps, ref = jnp.array([-1.0, -2.0, -0.5]), jnp.array([-1.5, -1.0, -0.5])
    np.testing.assert_allclose(ppo.kl_estimate(logps, ref, "k1"), [0.5, -1.0, 0.0], rtol=1e-6)
    ratio = np.exp(np.array([-1.5, -1.0, -0.5]) - np.array([-1.0, -2.0, -0.5]))
    np.testing.assert_allclose(ppo.kl_estimate(logps, ref, "k3"), (ratio - 1) - np.log(ratio), rtol=1e-5, atol=1e-7)
    assert (ppo.kl_estimate(logps, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1' or 'k3"):
        ppo.kl_estimate(logps, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_token():
    _, mask = _case()
    kl = jnp.ones(mask.shape)
    rewards, non_score = ppo.token_rewards(jnp.array([1.0, 2.0, 3.0]), kl, jnp.asarray(mask), kl_coef=0.1)
    np.testing.assert_allclose(non_score, -0.1 * mask)
    np.testing.assert_allclose(rewards[0, 5], 1.0 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(rewards[1, 2], 2.0 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(rewards[2, 0], 3.0 - 0.1, rtol=1e-6)
    assert float(jnp.sum(rewards)) == pytest.approx(6.0 - 0.1 * mask.sum(), rel=1e-6)


def test_clipped_policy_and_value_losses():
    rng, mask = _case(2)
    old = rng.normal(-2, 0.5, size=mask.shape).astype(np.float32)
    new = old + rng.normal(0, 0.3, size=mask.shape).astype(np.float32)
    advantages = rng.normal(size=mask.shape).astype(np.float32)
    loss, metrics = ppo.policy_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(advantages), jnp.asarray(mask), 0.2)
    ratio = np.exp(new - old)
    per_token = np.maximum(-advantages * ratio, -advantages * np.clip(ratio, 0.8, 1.2))
    assert float(loss) == pytest.approx(per_token[mask > 0].mean(), rel=1e-5)
    clipped = (-advantages * np.clip(ratio, 0.8, 1.2)) > (-advantages * ratio)
    assert float(metrics["policy/clipfrac_avg"]) == pytest.approx(clipped[mask > 0].mean(), rel=1e-5)
    assert float(metrics["policy/approxkl_avg"]) == pytest.approx((0.5 * (new - old) ** 2)[mask > 0].mean(), rel=1e-5)

    values_old = rng.normal(size=mask.shape).astype(np.float32)
    values_new = values_old + rng.normal(0, 0.5, size=mask.shape).astype(np.float32)
    returns = rng.normal(size=mask.shape).astype(np.float32)
    vloss, vmetrics = ppo.value_loss(jnp.asarray(values_new), jnp.asarray(values_old), jnp.asarray(returns),
                                     jnp.asarray(mask), 0.2)
    clipped_values = values_old + np.clip(values_new - values_old, -0.2, 0.2)
    errors = np.maximum((values_new - returns) ** 2, (clipped_values - returns) ** 2)
    assert float(vloss) == pytest.approx(0.5 * errors[mask > 0].mean(), rel=1e-5)
    assert 0.0 <= float(vmetrics["val/clipfrac_avg"]) <= 1.0


def test_adaptive_kl_controller_moves_toward_target():
    control = ppo.KLControl(init_coef=0.1, target=6.0, horizon=10_000)
    coef = jnp.asarray(0.1)
    raised = control.update(coef, observed_kl=jnp.asarray(12.0), num_samples=512)  # error clipped at +0.2
    assert float(raised) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10_000))
    lowered = control.update(coef, observed_kl=jnp.asarray(5.4), num_samples=512)
    assert float(lowered) == pytest.approx(0.1 * (1 - 0.1 * 512 / 10_000), rel=1e-6)
    assert float(ppo.KLControl(init_coef=0.1).update(coef, jnp.asarray(50.0), 512)) == pytest.approx(0.1)
