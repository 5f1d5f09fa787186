"""The rollout layer on tiny random models: n samples per prompt, the record's fields, weighted
None-aware rewards, the teacher-forced pass, reward models with the policy's or their own
tokenizer, verifiers, and reward-function errors that name the row."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.data import load_tokenizer
from jaxalign.generation import SamplingConfig
from jaxalign.models import init_model, layout_from_attention_mask
from jaxalign.rewards import RewardFunctionError, call_reward_function
from jaxalign.rl import (
    FunctionSource,
    RewardSet,
    RewardSpec,
    RolloutEngine,
    SourceContext,
    concatenate,
    make_verifier,
    parse_reward_spec,
    parse_reward_specs,
    sequences,
)
from jaxalign.rl import prompt_batch as rl_prompt_batch
from jaxalign.rl.reward_model import RewardModelError
from tests.rl_fixtures import bpe_tokenizer, narrow_tokenizer, save_reward_model, tiny_config

N, NEW = 3, 6
PROMPTS = ["Hello there, how are you?", "Tell me a joke.", "What is 2 + 3?"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin")


@pytest.fixture(scope="module")
def policy(tokenizer):
    return init_model(tiny_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id), seed=1)


def prompt_batch(tokenizer, texts=PROMPTS, padding_rows: int = 1) -> dict:
    """Left-padded prompts plus ``padding_rows`` empty rows."""
    return rl_prompt_batch(tokenizer, texts, slots=len(texts) + padding_rows)


def word_count(prompts, completions, **kwargs):
    return [float(len(text.split())) for text in completions]


def only_some(prompts, completions, completion_ids, **kwargs):
    """None for every completion of the first prompt ("not applicable"), else its token count."""
    return [None if prompt == prompts[0] else float(len(ids)) for prompt, ids in zip(prompts, completion_ids)]


def test_rollout_record_n_samples_weighted_none_aware_rewards(tokenizer, policy):
    rewards = RewardSet([FunctionSource(word_count, "words", "t:words"), FunctionSource(only_some, "tokens", "t:some")],
                        [0.5, 2.0])
    sampling = SamplingConfig(NEW, temperature=1.0, stop_token_ids=(tokenizer.eos_token_id,))
    engine = RolloutEngine(policy, tokenizer, sampling, rewards=rewards, num_generations=N, with_entropy=True)
    graphdef, params = nnx.split(policy)
    rollout = engine(params, prompt_batch(tokenizer), jax.random.key(0))
    batch, host = rollout.batch, rollout.host()
    rows = (len(PROMPTS) + 1) * N
    assert batch.completion_ids.shape == (rows, NEW) and batch.prompt_ids.shape[0] == rows
    np.testing.assert_array_equal(host["group"], np.arange(rows) // N)
    np.testing.assert_array_equal(host["row_mask"], [1.0] * len(PROMPTS) * N + [0.0] * N)
    padding = slice(len(PROMPTS) * N, None)
    assert not host["completion_mask"][padding].any() and not host["truncated"][padding].any()
    assert rollout.prompts[:N] == [PROMPTS[0]] * N and rollout.completions[-1] == ""
    assert len({tuple(row) for row in host["completion_ids"][:N]}) > 1, "the samples of one prompt must differ"
    np.testing.assert_array_equal(host["lengths"], host["completion_mask"].sum(1))
    stopped = (host["completion_ids"] == tokenizer.eos_token_id) & (host["completion_mask"] > 0)
    np.testing.assert_array_equal(host["truncated"], (host["row_mask"] > 0) & ~stopped.any(1))

    # Scores: per source, None-aware; the total weights the valid ones (TRL's nansum).
    words = np.array([len(c.split()) for c in rollout.completions], np.float32)
    np.testing.assert_array_equal(host["scores"][:, 0], np.where(host["row_mask"] > 0, words, 0))
    first_prompt = np.arange(rows) < N
    np.testing.assert_array_equal(host["score_valid"][:, 1], (host["row_mask"] > 0) & ~first_prompt)
    np.testing.assert_allclose(host["rewards"], 0.5 * host["scores"][:, 0] + 2.0 * host["scores"][:, 1])
    np.testing.assert_array_equal(host["reward_valid"], host["row_mask"] > 0)

    # The teacher-forced log-probs (T = 1) are the sampler's; no reference asked for, none computed.
    assert batch.ref_logps is None and batch.values is None and batch.entropy is not None
    from jaxalign.generation import generate

    sampled = generate(policy, *(prompt_batch(tokenizer)[k] for k in ("prompt_ids", "prompt_mask")),
                       jax.random.key(0), sampling, num_samples=N)
    np.testing.assert_array_equal(np.asarray(sampled.tokens)[: len(PROMPTS) * N], host["completion_ids"][: len(PROMPTS) * N])
    np.testing.assert_allclose(host["logps"], np.asarray(sampled.logps) * host["completion_mask"], atol=2e-5)
    # Through 2 live slots (continuous batching) the rollout samples the same replies.
    slotted = RolloutEngine(policy, tokenizer, dataclasses.replace(sampling, slots=2), num_generations=N)
    np.testing.assert_array_equal(np.asarray(slotted.sample(params, prompt_batch(tokenizer), jax.random.key(0))
                                             .batch.completion_ids), host["completion_ids"])

    metrics = rollout.metrics()
    real = host["row_mask"] > 0
    assert metrics["reward"] == pytest.approx(host["rewards"][real].mean())
    assert metrics["reward_std"] == pytest.approx(host["rewards"][real].std(ddof=1), rel=1e-5)
    assert metrics["rewards/tokens/mean"] == pytest.approx(host["scores"][real & ~first_prompt, 1].mean())
    assert metrics["rewards/words/std"] == pytest.approx(words[real].std(ddof=1), rel=1e-5)
    assert metrics["completions/clipped_ratio"] == pytest.approx(host["truncated"][real].mean())
    assert metrics["rewards/unscored_rows"] == 0.0 and 0.0 <= metrics["frac_reward_zero_std"] <= 1.0

    table = rollout.completion_rows(step=7)
    assert len(table) == len(PROMPTS) * N and table[0]["rewards"]["tokens"] is None
    assert table[N] == {"step": 7, "prompt": PROMPTS[1], "completion": rollout.completions[N],
                        "reward": pytest.approx(float(host["rewards"][N])),
                        "rewards": {"words": float(host["scores"][N, 0]), "tokens": float(host["scores"][N, 1])},
                        "advantage": None, "length": int(host["lengths"][N]), "truncated": bool(host["truncated"][N])}

    # With reference parameters the reference pass runs; the policy as its own reference gives equal log-probs.
    with_ref = engine.teacher_force(rollout, params, ref_params=params)
    np.testing.assert_allclose(np.asarray(with_ref.batch.ref_logps), host["logps"], atol=1e-6)
    # Without policy parameters only the reference's pass runs (an on-policy update computes its own).
    plain = RolloutEngine(policy, tokenizer, sampling, num_generations=N)  # no entropies asked for
    ref_only = plain.teacher_force(dataclasses.replace(rollout, batch=rollout.batch.replace(logps=None)), None,
                                   ref_params=params)
    assert ref_only.batch.logps is None
    np.testing.assert_allclose(np.asarray(ref_only.batch.ref_logps), host["logps"], atol=1e-6)
    with pytest.raises(ValueError, match="entropies and values come from the policy's pass; pass policy_params"):
        engine.teacher_force(rollout, None)  # this engine was asked for entropies

    # DAPO-style refill: keep groups 2 and 0, then stack with another rollout.
    kept = rollout.select_groups([2, 0])
    assert kept.prompts[0] == PROMPTS[2] and kept.num_prompts == 2
    np.testing.assert_array_equal(np.asarray(kept.batch.group), np.arange(2 * N) // N)
    wider = rollout.select_groups([1])
    wider = dataclasses.replace(wider, batch=wider.batch.replace(
        prompt_ids=jnp.pad(wider.batch.prompt_ids, ((0, 0), (16, 0))), prompt_mask=jnp.pad(wider.batch.prompt_mask, ((0, 0), (16, 0)))))
    both = concatenate([kept, wider])
    assert both.num_prompts == 3 and both.prompts[-1] == PROMPTS[1] and len(both.completion_token_ids) == 3 * N
    np.testing.assert_array_equal(np.asarray(both.batch.group), np.arange(3 * N) // N)
    assert both.batch.prompt_ids.shape[1] == rollout.batch.prompt_ids.shape[1] + 16
    np.testing.assert_array_equal(np.asarray(both.batch.prompt_ids)[:N, 16:], host["prompt_ids"][2 * N:3 * N])


def test_reward_function_errors_name_function_row_and_exception():
    where = ["data.jsonl:3", "data.jsonl:7", "data.jsonl:9"]

    def fails_on_joke(prompts, completions, **kwargs):
        if any("joke" in p for p in prompts):
            raise KeyError("no jokes")
        return [1.0] * len(prompts)

    with pytest.raises(RewardFunctionError, match=r"reward function 'm:f' raised KeyError: 'no jokes' "
                                                  r"\(on prompt row data.jsonl:7\)"):
        call_reward_function(fails_on_joke, "m:f", PROMPTS, ["a", "b", "c"], {}, where=where)

    def batch_only(prompts, completions, **kwargs):
        if len(prompts) > 1:
            raise RuntimeError("too many")
        return [1.0]

    with pytest.raises(RewardFunctionError, match="raised RuntimeError: too many \\(on the batch of rows data.jsonl:3"):
        call_reward_function(batch_only, "m:f", PROMPTS, ["a", "b", "c"], {}, where=where)
    with pytest.raises(RewardFunctionError, match=r"score 1 is inf \(scores must be finite\) \(prompt row data.jsonl:7\)"):
        call_reward_function(lambda **kw: [1.0, math.inf, 0.0], "m:f", PROMPTS, ["a", "b", "c"], {}, where=where)
    with pytest.raises(RewardFunctionError, match=r"score 2 is 'x'.*not a number or None \(prompt row data.jsonl:9\)"):
        call_reward_function(lambda **kw: [1.0, None, "x"], "m:f", PROMPTS, ["a", "b", "c"], {}, where=where)


def test_verifiers_and_specs():
    exact = make_verifier("exact_answer")
    assert exact(PROMPTS, ["so 2 + 3 = 5", "maybe 4, no: 5.0", "no idea", "6"], answer=["5", "5", "5", None]) == [
        1.0, 1.0, 0.0, None]
    words = make_verifier("exact_answer", pattern=r"Answer: (\w+)", column="label", ignore_case=True)
    assert words(PROMPTS, ["Answer: Paris", "Answer: rome"], label=["paris", "Paris"]) == [1.0, 0.0]
    fmt = make_verifier("format", pattern=r"<answer>.*</answer>", full_match=True, unmatched=-1.0)
    assert fmt(PROMPTS, ["<answer>5</answer>", "so <answer>5</answer>"]) == [1.0, -1.0]
    with pytest.raises(ValueError, match="unknown option.*colum.*options: column, pattern"):
        make_verifier("exact_answer", colum="x")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        make_verifier("format", pattern="(")

    spec = parse_reward_spec({"verifier": "exact_answer", "column": "answer", "weight": 2})
    assert spec == RewardSpec("verifier", "exact_answer", 2.0, None, {"column": "answer"})
    assert parse_reward_spec("my_rewards.py:polite").kind == "function"
    with pytest.raises(ValueError, match="rewards\\[1\\]: name exactly one source kind.*did you mean 'function'"):
        parse_reward_specs(["m:f", {"functon": "m:g"}])
    with pytest.raises(ValueError, match="2 weights for 1 reward sources"):
        parse_reward_specs(["m:f"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="neither a reward-model folder nor 'module:function'"):
        parse_reward_spec("no_such_folder")


def _per_position_scores(folder, ids, positions, segments) -> np.ndarray:
    """A reward-model folder's per-position scores ``[R, L]`` (one jitted forward)."""
    from jaxalign.models import load_pretrained

    graphdef, state = nnx.split(load_pretrained(folder, head="score"))
    forward = jax.jit(lambda state, *rows: nnx.merge(graphdef, state).scores(*rows))
    return np.asarray(forward(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments)))


def _direct_scores(folder, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions, segments = layout_from_attention_mask(jnp.asarray(mask))
    per_position = _per_position_scores(folder, ids, positions, segments)
    return per_position[np.arange(len(ids)), np.maximum(mask.sum(1) - 1, 0)]


def test_reward_models_share_tokens_or_retokenize_the_text(tokenizer, policy, tmp_path):
    sampling = SamplingConfig(NEW, temperature=1.0, stop_at_eos=False)
    context = SourceContext(tokenizer=tokenizer, sample_texts=lambda: PROMPTS)
    save_reward_model(tmp_path / "same", len(tokenizer), tokenizer)
    bpe = bpe_tokenizer(PROMPTS * 20 + ["a b c d e f g h i j k l m n o p q r s t u v w x y z"])
    save_reward_model(tmp_path / "own", len(bpe), bpe)
    rewards = RewardSet.build([RewardSpec("model", str(tmp_path / "same")), RewardSpec("model", str(tmp_path / "own"))],
                              context)
    same, own = rewards.sources
    assert same.shares_tokens and not own.shares_tokens and rewards.names == ("same", "own")
    engine = RolloutEngine(policy, tokenizer, sampling, rewards=rewards, num_generations=2)
    rollout = engine.score(engine.sample(nnx.split(policy)[1], prompt_batch(tokenizer), jax.random.key(3)))
    host = rollout.host()
    real = host["row_mask"] > 0

    # Shared tokens: the rollout's [prompt | completion] rows as they are.
    ids, positions, segments = sequences(
        rollout.batch.prompt_ids, rollout.batch.prompt_mask, rollout.batch.completion_ids, rollout.batch.completion_mask)
    per_position = _per_position_scores(tmp_path / "same", ids, positions, segments)
    last = host["prompt_ids"].shape[1] + host["lengths"] - 1
    np.testing.assert_allclose(host["scores"][real, 0], per_position[np.arange(len(ids)), last][real], atol=1e-5)

    # Own tokenizer: prompt + completion text re-tokenized.
    encoded = [bpe(p + c)["input_ids"] for p, c, r in zip(rollout.prompts, rollout.completions, real) if r]
    width = max(map(len, encoded))
    own_ids = np.array([e + [0] * (width - len(e)) for e in encoded])
    own_mask = np.array([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    np.testing.assert_allclose(host["scores"][real, 1], _direct_scores(tmp_path / "own", own_ids, own_mask), atol=1e-5)


def test_reward_model_tokenizer_that_cannot_encode_the_text_fails_at_setup(tokenizer, tmp_path):
    narrow = narrow_tokenizer()
    save_reward_model(tmp_path / "rm", len(narrow), narrow)
    context = SourceContext(tokenizer=tokenizer, sample_texts=lambda: PROMPTS)
    with pytest.raises(RewardModelError, match=r"reward model .*rm: the reward model's tokenizer cannot encode the "
                                                r"policy's text: \d+% of the tokens of 3 sample prompts are its unknown"):
        RewardSet.build([RewardSpec("model", str(tmp_path / "rm"))], context)
    save_reward_model(tmp_path / "small", 16)  # no tokenizer of its own, vocabulary smaller than the policy's
    with pytest.raises(RewardModelError, match="vocabulary of 16 tokens, fewer than the policy's tokenizer"):
        RewardSet.build([RewardSpec("model", str(tmp_path / "small"))], context)


def test_docs_rl_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "rl.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "RolloutEngine(policy" in b)
    namespace: dict = {}
    exec(compile(block, "docs/rl.md", "exec"), namespace)
    rollout = namespace["rollout"]
    import yaml

    for example in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):  # every YAML example names valid sources
        specs = parse_reward_specs(yaml.safe_load(example)["ppo"]["rewards"])
        assert {spec.kind for spec in specs} <= {"function", "model", "verifier"}
    assert rollout.batch.completion_ids.shape == (8, 12) and rollout.sources == ("helpful_harmless", "format")
    np.testing.assert_allclose(np.asarray(namespace["kl"]), 0.0, atol=1e-5)
    assert np.asarray(rollout.batch.example_id).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_on_rows_places_a_host_array_like_the_rollout_rows(tokenizer, policy):
    """``engine.on_rows``: a per-row host array becomes a global array sharded like the rollout's rows
    (an algorithm's per-row mask can then enter the same jitted step); without a mesh, a plain array."""
    from jaxalign.sharding import MeshConfig, batch_sharding, make_mesh

    sampling = SamplingConfig(NEW, temperature=1.0)
    keep = np.arange(16, dtype=np.float32).reshape(8, 2)
    mesh = make_mesh(MeshConfig(data=len(jax.devices())))
    placed = RolloutEngine(policy, tokenizer, sampling, mesh=mesh).on_rows(keep)
    assert placed.sharding.is_equivalent_to(batch_sharding(mesh), keep.ndim)
    np.testing.assert_array_equal(np.asarray(placed), keep)
    np.testing.assert_array_equal(np.asarray(RolloutEngine(policy, tokenizer, sampling).on_rows(keep)), keep)
