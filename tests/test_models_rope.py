"""RoPE tables: the values of the doubled-angle formula, evaluated once per forward in compiled steps."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models import load_pretrained
from jaxalign.models.config import ModelConfig
from jaxalign.models.hf_config import fields_from_hf
from jaxalign.models.rope import apply_rope, inverse_frequencies, rope_tables
from model_fixtures import hf_config, make_causal_lm


def test_tables_equal_cos_and_sin_of_the_doubled_angles_bit_for_bit():
    inv_freq = inverse_frequencies(ModelConfig(**fields_from_hf(hf_config("llama3_rope_tied").to_dict())))
    positions = jnp.asarray(np.random.default_rng(0).integers(0, 4096, (3, 50)))

    def doubled(positions):  # Hugging Face's formula: cos/sin of the angles concatenated with themselves
        angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
        angles = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(angles), jnp.sin(angles)

    ours, theirs = jax.jit(lambda p: rope_tables(p, inv_freq))(positions), jax.jit(doubled)(positions)
    for got, want in zip(ours, theirs):
        assert got.shape == (3, 50, 2 * len(inv_freq))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_compiled_gradient_evaluates_cos_and_sin_once(tmp_path):
    """The q and k rotations of every layer, forward and backward, read one materialised table:
    XLA:CPU used to fuse cos/sin into each of those consumers (24 evaluations per built-in DPO step)."""
    make_causal_lm("llama", tmp_path, num_hidden_layers=3)
    model = load_pretrained(tmp_path)
    ids = jnp.ones((2, 16), jnp.int32)
    positions = jnp.tile(jnp.arange(16, dtype=jnp.int32), (2, 1))
    segments = jnp.ones((2, 16), jnp.int32)

    def loss(model):
        return jnp.sum(model.hidden_states(ids, positions, segments) ** 2)

    hlo = jax.jit(nnx.grad(loss)).lower(model).compile().as_text()
    assert len(re.findall(r"\bcosine\(", hlo)) == 1, "cos evaluated more than once per forward: see rope_tables"
    assert len(re.findall(r"\bsine\(", hlo)) == 1


def test_rotation_keeps_the_norm_of_each_half_pair():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 2, 8)), jnp.float32)
    cos, sin = rope_tables(jnp.arange(4)[None], np.array([1.0, 0.5, 0.25, 0.125], np.float32))
    out = apply_rope(x, cos, sin)
    pair_norm = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    np.testing.assert_allclose(np.asarray(pair_norm(out)), np.asarray(pair_norm(x)), rtol=1e-5)
