"""Reward hacking made visible and mitigated, in the rollout layer (so every RL algorithm gets it):
a gold-role source logged beside the trained reward and never summed into it, reward shaping
(length penalty, length normalisation, clipping) and reward-model ensembles, against values
computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from jaxalign.data import load_tokenizer
from jaxalign.generation import SamplingConfig
from jaxalign.models import init_model
from jaxalign.rl import (
    FunctionSource,
    RewardSet,
    RewardShaping,
    RewardSpec,
    RolloutEngine,
    SourceContext,
    concatenate,
    parse_reward_spec,
    prompt_batch,
    scoring_inputs,
)
from jaxalign.rl.sources import ScoringInputs
from tests.rl_fixtures import save_reward_model, tiny_config

import jax


def _inputs(completions: list[str]) -> ScoringInputs:
    count = len(completions)
    return ScoringInputs(prompts=["p"] * count, completions=completions, completion_ids=[[1]] * count, columns={},
                         where=[f"row {i}" for i in range(count)], rows=np.arange(count), batch=None)


def proxy(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]          # rewards length: hackable


def truth(prompts, completions, **kwargs):
    return [None if c == "skip" else (1.0 if c == "ok" else -1.0) for c in completions]


def test_gold_role_is_scored_and_logged_but_never_in_the_total():
    rewards = RewardSet([FunctionSource(proxy, "proxy", "proxy"), FunctionSource(truth, "truth", "truth")],
                        [0.5, 2.0], ["train", "gold"])
    scores, valid = rewards.score(_inputs(["ok", "long reply", "skip"]))
    total, total_valid = rewards.total(scores, valid)
    np.testing.assert_allclose(total, [1.0, 5.0, 2.0])           # 0.5 x len: gold never added
    assert total_valid.all()
    gold, gold_valid = rewards.gold(scores, valid)
    np.testing.assert_allclose(gold, [2.0, -2.0, 0.0])           # 2 x truth; None row not scored
    np.testing.assert_array_equal(gold_valid, [True, True, False])
    assert parse_reward_spec({"function": "m:f", "role": "gold"}).role == "gold"
    with pytest.raises(ValueError, match="role must be one of train, gold"):
        parse_reward_spec({"function": "m:f", "role": "judge"}, "ppo.rewards[1]")
    with pytest.raises(ValueError, match="at least one must be trained on"):
        RewardSet([FunctionSource(truth, "truth", "truth")], [1.0], ["gold"])


def test_shaping_length_penalty_normalisation_and_clip_by_hand():
    rewards, lengths = np.array([3.0, -8.0, 1.0]), np.array([10, 4, 0])
    shaped, metrics = RewardShaping(length_penalty=0.1).apply(rewards, lengths)
    np.testing.assert_allclose(shaped, [2.0, -8.4, 1.0], rtol=1e-6)
    shaped, _ = RewardShaping(length_normalize=True).apply(rewards, lengths)
    np.testing.assert_allclose(shaped, [0.3, -2.0, 1.0], rtol=1e-6)      # empty reply: divided by 1
    shaped, metrics = RewardShaping(length_penalty=0.1, clip=2.5).apply(rewards, lengths)
    np.testing.assert_allclose(shaped, [2.0, -2.5, 1.0], rtol=1e-6)
    assert metrics["rewards/clipped_ratio"] == pytest.approx(1 / 3)
    assert metrics["rewards/unshaped"] == pytest.approx(-4 / 3)
    with pytest.raises(ValueError, match="ppo.reward_shaping: unknown key 'clipp'"):
        RewardShaping.of({"clipp": 1.0}, "ppo.reward_shaping")
    with pytest.raises(ValueError, match="clip must be > 0"):
        RewardShaping.of({"clip": 0})


def test_engine_logs_gold_beside_the_shaped_proxy_and_tables_carry_it():
    tokenizer = load_tokenizer("builtin")
    policy = init_model(tiny_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id), seed=1)
    rewards = RewardSet([FunctionSource(proxy, "proxy", "proxy"), FunctionSource(truth, "truth", "truth")],
                        [1.0, 1.0], ["train", "gold"], RewardShaping(length_penalty=0.5))
    engine = RolloutEngine(policy, tokenizer, SamplingConfig(max_new_tokens=5, temperature=1.0), rewards=rewards,
                           num_generations=2)
    _, params = nnx.split(policy)
    rollout = engine(params, prompt_batch(tokenizer, ["Hi.", "How are you?"]), jax.random.key(0))
    host = rollout.host()
    chars = np.array([len(c) for c in rollout.completions], np.float32)
    np.testing.assert_allclose(host["rewards"], chars - 0.5 * host["lengths"], rtol=1e-6)
    metrics = rollout.metrics()
    assert metrics["gold/reward"] == pytest.approx(-1.0)        # random replies are never "ok"
    assert metrics["reward"] == pytest.approx(float(np.mean(chars - 0.5 * host["lengths"])), rel=1e-5)
    assert metrics["rewards/unshaped"] == pytest.approx(float(chars.mean()), rel=1e-5)
    assert all(row["gold"] == -1.0 for row in rollout.completion_rows(1))
    both = concatenate([rollout, rollout])
    assert both.metrics()["gold/reward"] == pytest.approx(-1.0) and both.roles == ("train", "gold")
    again = rewards.score(scoring_inputs(rollout))[0]
    np.testing.assert_allclose(again[:, 0], chars)


def test_ensemble_mean_min_and_disagreement_match_its_members(tmp_path):
    tokenizer = load_tokenizer("builtin")
    policy = init_model(tiny_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id), seed=1)
    folders = []
    for seed in (2, 3, 4):
        folder = tmp_path / f"rm{seed}"
        from jaxalign.models import save_pretrained

        save_pretrained(init_model(tiny_config(len(tokenizer)), head="score", seed=seed), folder)
        folders.append(str(folder))
    context = SourceContext(tokenizer=tokenizer)
    specs = [RewardSpec("model", f) for f in folders]
    specs += [parse_reward_spec({"ensemble": reduce, "members": folders, "name": reduce}) for reduce in ("mean", "min")]
    rewards = RewardSet.build(specs, context)
    engine = RolloutEngine(policy, tokenizer, SamplingConfig(max_new_tokens=4, temperature=1.0), rewards=rewards,
                           num_generations=2)
    _, params = nnx.split(policy)
    rollout = engine(params, prompt_batch(tokenizer, ["Hi.", "How are you?"]), jax.random.key(1))
    scores = rollout.host()["scores"]
    members = scores[:, :3]
    np.testing.assert_allclose(scores[:, 3], members.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[:, 4], members.min(axis=1), rtol=1e-5, atol=1e-6)
    metrics = rollout.metrics()
    assert metrics["rewards/mean/disagreement"] == pytest.approx(float(members.std(axis=1, ddof=1).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 reward-model folders"):
        RewardSet.build([parse_reward_spec({"ensemble": "min", "members": folders[:1]})], context)
    with pytest.raises(ValueError, match="reduce by one of mean, min"):
        RewardSet.build([parse_reward_spec({"ensemble": "max", "members": folders})], context)
