"""The token pickers on plain logits: distributions, nucleus membership, greedy ties, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.generation import SamplingConfig, sample_tokens
from jaxalign.generation.sampling import CDF_BLOCK, NUCLEUS_CANDIDATES, categorical, first_argmax, nucleus_mask, top_k


def reference_nucleus(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Sort-based nucleus ``[b, v]`` bool: tokens whose more likely tokens hold < top_p of the mass."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, -1)
    keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return keep


@pytest.mark.parametrize("size", [37, 3 * CDF_BLOCK + 5])  # one level; two levels with a ragged last block
def test_categorical_follows_softmax_and_never_draws_excluded(size):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size).astype(np.float32)
    logits[rng.choice(size, size // 4, replace=False)] = -np.inf
    draws = 40_000
    samples = np.asarray(jax.jit(categorical)(jax.random.key(1), jnp.tile(jnp.asarray(logits), (draws, 1))))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    counts = np.bincount(samples, minlength=size)
    assert counts[probs == 0].sum() == 0
    expected = draws * probs
    # Every frequency within 5 standard deviations of its binomial expectation.
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - probs)) + 1)


@pytest.mark.parametrize("scale", [0.3, 3.0])  # flat and peaked rows
def test_nucleus_mask_matches_sorting(scale):
    logits = np.random.default_rng(1).normal(0, scale, (6, 500)).astype(np.float32)
    logprobs = jax.nn.log_softmax(jnp.asarray(logits), -1)
    for top_p in (0.05, 0.5, 0.9, 0.99):
        got = np.asarray(jax.jit(nucleus_mask, static_argnums=1)(logprobs, top_p))
        np.testing.assert_array_equal(got, reference_nucleus(logits, top_p), err_msg=f"top_p={top_p}")


@pytest.mark.parametrize("flat", [False, True])  # nucleus inside the candidates / spread over the vocabulary
def test_top_p_samples_stay_in_nucleus_and_cover_it(flat):
    vocab, rows, top_p = 300, 4000, 0.6
    base = np.random.default_rng(2).normal(0, 0.2 if flat else 4.0, vocab).astype(np.float32)
    nucleus = reference_nucleus(base[None], top_p)[0]
    assert (nucleus.sum() > NUCLEUS_CANDIDATES) == flat
    cfg = SamplingConfig(max_new_tokens=1, top_p=top_p)
    tokens, logps = jax.jit(sample_tokens, static_argnums=2)(jnp.tile(jnp.asarray(base), (rows, 1)), jax.random.key(3), cfg)
    tokens, logps = np.asarray(tokens), np.asarray(logps)
    assert nucleus[tokens].all()
    if not flat:
        assert set(tokens) == set(np.flatnonzero(nucleus))
    # Sampling log-probs: renormalised over the nucleus.
    renormalised = base - np.log(np.exp(base[nucleus]).sum())
    np.testing.assert_allclose(logps, renormalised[tokens], atol=1e-5)


def test_top_k_then_top_p_and_temperature():
    logits = jnp.asarray(np.random.default_rng(4).normal(0, 2, (2000, 100)).astype(np.float32))
    cfg = SamplingConfig(max_new_tokens=1, temperature=0.7, top_k=5, top_p=0.8)
    tokens, logps = (np.asarray(x) for x in jax.jit(sample_tokens, static_argnums=2)(logits, jax.random.key(5), cfg))
    scaled = np.asarray(logits) / 0.7
    top5 = np.argsort(-scaled, -1)[:, :5]
    assert (tokens[:, None] == top5).any(-1).all()
    restricted = np.full_like(scaled, -np.inf)
    np.put_along_axis(restricted, top5, np.take_along_axis(scaled, top5, -1), -1)
    keep = reference_nucleus(restricted, 0.8)
    assert keep[np.arange(len(tokens)), tokens].all()
    masked = np.where(keep, restricted, -np.inf)
    expected = masked[np.arange(len(tokens)), tokens] - np.log(np.exp(masked).sum(-1))
    np.testing.assert_allclose(logps, expected, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_two_level_top_k_equals_lax_top_k(k):
    x = jnp.asarray(np.random.default_rng(6).normal(size=(5, 20_011)).astype(np.float32))  # ragged last block
    values, ids = jax.jit(top_k, static_argnums=1)(x, k)
    expected_values, expected_ids = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(expected_values))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(expected_ids))


def test_greedy_takes_the_first_maximum():
    logits = jnp.array([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 5.0, 5.0], [-3.0, -2.0, -4.0, -2.5]])
    np.testing.assert_array_equal(np.asarray(first_argmax(logits)), [1, 0, 1])
    tokens, logps = sample_tokens(logits, jax.random.key(0), SamplingConfig(max_new_tokens=1, temperature=0.0))
    np.testing.assert_array_equal(np.asarray(tokens), [1, 0, 1])
    np.testing.assert_array_equal(np.asarray(logps), 0.0)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="SamplingConfig"):
        SamplingConfig(**{"max_new_tokens": 4, **bad})
