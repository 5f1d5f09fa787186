"""GRPO's advantage estimators and policy losses against NumPy references written here
(formulas: Shao et al. 2024; Liu et al. 2025 (Dr. GRPO); Yu et al. 2025 (DAPO); Zheng et al. 2025
(GSPO); Ahmadian et al. 2024 (RLOO); Hu 2025 (REINFORCE++); TRL's reductions)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algos import grpo_advantages, grpo_losses
from jaxalign.algos.grpo_config import GRPOConfig
from jaxalign.rl.verifiers import make_verifier

HELPER = str(Path(__file__).with_name("user_grpo_helper.py"))


def _cfg(**options) -> GRPOConfig:
    return GRPOConfig(reward_funcs=["x:y"], **options)


def _rewards(seed: int = 0):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(5, 4)).astype(np.float32)
    valid = np.ones((5, 4), bool)
    valid[1, 3] = False  # one unscored reply
    valid[2, :] = False  # a group nobody scored
    valid[3, 1:] = False  # a group with one scored reply
    rewards[4] = 0.5  # a group with equal rewards
    return rewards, valid


def _np_group(rewards, valid):
    """Per group: (count, mean, Bessel std) over valid replies."""
    out = []
    for r, v in zip(rewards, valid):
        x = r[v].astype(np.float64)
        out.append((len(x), x.mean() if len(x) else 0.0, x.std(ddof=1) if len(x) > 1 else 0.0))
    return out


def _np_grpo(rewards, valid, scale):
    adv = np.zeros_like(rewards, np.float64)
    flat = rewards[valid].astype(np.float64)
    batch_std = flat.std(ddof=1)
    for g, (count, mean, std) in enumerate(_np_group(rewards, valid)):
        for j in range(rewards.shape[1]):
            if valid[g, j]:
                a = rewards[g, j] - mean
                adv[g, j] = a / (std + 1e-4) if scale == "group" else a / (batch_std + 1e-4) if scale == "batch" else a
    return adv


def _np_rloo(rewards, valid):
    adv = np.zeros_like(rewards, np.float64)
    for g in range(rewards.shape[0]):
        for j in range(rewards.shape[1]):
            others = [rewards[g, k] for k in range(rewards.shape[1]) if k != j and valid[g, k]]
            if valid[g, j] and others:
                adv[g, j] = rewards[g, j] - np.mean(others)
    return adv


def _np_reinforce_pp(rewards, valid):
    flat = rewards[valid].astype(np.float64)
    return np.where(valid, (rewards - flat.mean()) / (flat.std(ddof=1) + 1e-4), 0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_numpy(scale):
    rewards, valid = _rewards()
    got = grpo_advantages.get_estimator("grpo")(jnp.asarray(rewards), jnp.asarray(valid), _cfg(scale_rewards=scale))
    np.testing.assert_allclose(np.asarray(got), _np_grpo(rewards, valid, scale), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[2] == 0) and np.all(np.asarray(got)[4] == 0)


def test_scale_rewards_accepts_trl_booleans():
    assert _cfg(scale_rewards=True).scale_rewards == "group"
    assert _cfg(scale_rewards=False).scale_rewards == "none"


def test_rloo_and_reinforce_pp_match_numpy():
    rewards, valid = _rewards(1)
    cfg = _cfg()
    rloo = grpo_advantages.get_estimator("rloo")(jnp.asarray(rewards), jnp.asarray(valid), cfg)
    np.testing.assert_allclose(np.asarray(rloo), _np_rloo(rewards, valid), rtol=1e-5, atol=1e-6)
    rpp = grpo_advantages.get_estimator("reinforce_pp")(jnp.asarray(rewards), jnp.asarray(valid), cfg)
    np.testing.assert_allclose(np.asarray(rpp), _np_reinforce_pp(rewards, valid), rtol=1e-5, atol=1e-6)


def _loss_inputs(seed: int = 0, with_ref: bool = True):
    rng = np.random.default_rng(seed)
    b, n = 6, 5
    logps = rng.normal(-2.0, 0.5, size=(b, n)).astype(np.float32)
    old = (logps + rng.normal(0.0, 0.3, size=(b, n))).astype(np.float32)  # ratios well outside 1 +- 0.2
    ref = (logps + rng.normal(0.0, 0.2, size=(b, n))).astype(np.float32)
    mask = np.ones((b, n), np.float32)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    mask[5] = 0  # a reply that counts with no token (e.g. a masked truncated one)
    logps[mask == 0] = np.nan  # masked entries may hold anything
    advantages = rng.normal(size=b).astype(np.float32)
    row_mask = np.ones(b, np.float32)
    row_mask[4] = 0  # a padding row
    mask[4] = 0
    return dict(logps=logps, old_logps=old, ref_logps=ref if with_ref else None, advantages=advantages, mask=mask,
                row_mask=row_mask, batch_tokens=np.float32(7.5))


def _np_per_token(x, cfg):
    mask = x["mask"] > 0
    log_ratio = np.where(mask, x["logps"] - x["old_logps"], 0.0).astype(np.float64)
    if cfg.importance_sampling_level == "sequence":
        per_row = log_ratio.sum(1) / np.maximum(mask.sum(1), 1)
        log_ratio = np.repeat(per_row[:, None], log_ratio.shape[1], axis=1)
    ratio = np.exp(log_ratio)
    a = x["advantages"][:, None].astype(np.float64)
    loss = -np.minimum(ratio * a, np.clip(ratio, 1 - cfg.epsilon, 1 + cfg.clip_high) * a)
    if x["ref_logps"] is not None and cfg.beta > 0:
        d = np.where(mask, x["ref_logps"] - x["logps"], 0.0)
        loss = loss + cfg.beta * (np.exp(d) - d - 1)
    low = (ratio < 1 - cfg.epsilon) & (a < 0) & mask
    high = (ratio > 1 + cfg.clip_high) & (a > 0) & mask
    return np.where(mask, loss, 0.0), low.sum() / mask.sum(), high.sum() / mask.sum(), (low | high).sum() / mask.sum()


def _np_loss(x, cfg):
    per_token, *_ = _np_per_token(x, cfg)
    mask, rows = x["mask"], x["row_mask"]
    if cfg.loss_type == "grpo":
        per_row = per_token.sum(1) / np.maximum(mask.sum(1), 1)
        return (per_row * rows).sum() / rows.sum()
    if cfg.loss_type == "bnpo":
        return per_token.sum() / mask.sum()
    if cfg.loss_type == "dr_grpo":
        return per_token.sum() / (rows.sum() * cfg.max_completion_length)
    return per_token.sum() / x["batch_tokens"]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_losses_match_numpy(loss_type, level, beta):
    cfg = _cfg(loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon=0.2, epsilon_high=0.28,
               max_completion_length=5)
    x = _loss_inputs()
    inputs = grpo_losses.PolicyLossInputs(**{k: None if v is None else jnp.asarray(v) for k, v in x.items()})
    loss, metrics = grpo_losses.get_policy_loss(loss_type)(inputs, cfg)
    assert float(loss) == pytest.approx(_np_loss(x, cfg), rel=1e-5, abs=1e-6)
    _, low, high, region = _np_per_token(x, cfg)
    assert float(metrics["clip_ratio/low_mean"]) == pytest.approx(low, abs=1e-6)
    assert float(metrics["clip_ratio/high_mean"]) == pytest.approx(high, abs=1e-6)
    assert float(metrics["clip_ratio/region_mean"]) == pytest.approx(region, abs=1e-6)
    assert region > 0  # the inputs do exercise clipping
    assert ("kl" in metrics) == (beta > 0)
    grads = jax.grad(lambda lp: grpo_losses.get_policy_loss(loss_type)(
        grpo_losses.PolicyLossInputs(**{**inputs.__dict__, "logps": lp}), cfg)[0])(inputs.logps)
    assert np.all(np.isfinite(np.asarray(grads)))  # NaN in masked slots never reaches the gradient


def test_sequence_level_ratio_is_one_number_per_reply():
    """GSPO: every token of a reply gets the same clipped-or-not decision."""
    cfg = _cfg(importance_sampling_level="sequence", loss_type="bnpo")
    x = _loss_inputs(3, with_ref=False)
    x["advantages"] = np.abs(x["advantages"])
    per_token, low, high, _ = _np_per_token(x, cfg)
    mask = x["mask"] > 0
    ratios = per_token / -x["advantages"][:, None]
    for row in range(len(ratios)):
        assert np.ptp(ratios[row][mask[row]]) < 1e-6 if mask[row].any() else True


def test_user_estimator_and_loss_by_import_path():
    rewards, valid = _rewards()
    adv = grpo_advantages.get_estimator(f"{HELPER}:max_baseline")(jnp.asarray(rewards), jnp.asarray(valid), _cfg())
    best = np.where(valid, rewards, -np.inf).max(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(adv), np.where(valid, rewards - best, 0.0), rtol=1e-6)
    x = _loss_inputs()
    inputs = grpo_losses.PolicyLossInputs(**{k: None if v is None else jnp.asarray(v) for k, v in x.items()})
    loss, metrics = grpo_losses.get_policy_loss(f"{HELPER}:sum_loss")(inputs, _cfg())
    per_token, *_ = _np_per_token(x, _cfg())
    assert float(loss) == pytest.approx(per_token.sum(), rel=1e-5)
    assert float(metrics["custom/tokens"]) == x["mask"].sum()


@pytest.mark.parametrize("option, spec, message", [
    ("loss_type", "dr_grop", "Did you mean 'dr_grpo'"),
    ("advantage_estimator", "rlo", "Did you mean 'rloo'"),
    ("loss_type", "no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
])
def test_unknown_estimator_or_loss_names_the_option(option, spec, message):
    cfg = _cfg(**{option: spec})
    with pytest.raises(Exception, match=message):
        cfg.check_for_run(batch_size=4)


def test_soft_overlong_punishment_values():
    fn = make_verifier("soft_overlong", max_length=10, cache=4)
    lengths = [3, 6, 7, 8, 10, 12]
    scores = fn(["p"] * len(lengths), ["c"] * len(lengths), completion_ids=[[0] * n for n in lengths])
    assert scores == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="need 0 < cache < max_length"):
        make_verifier("soft_overlong", max_length=4, cache=4)
