"""Remat policies change memory, not gradients; chunked token log-probs keep memory to one chunk."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models import load_pretrained, sequence_token_logps
from jaxalign.models.logps import chunk_tokens, logps_from_hidden
from model_fixtures import make_causal_lm, padded_batch


def _nll(state, graphdef, ids, mask):
    model = nnx.merge(graphdef, state)
    logps = sequence_token_logps(model, ids, mask, chunk_size=4)
    return -jnp.sum(logps * mask[:, 1:])


def test_remat_policies_give_the_same_gradients(tmp_path):
    make_causal_lm("qwen3", tmp_path)
    ids, mask = padded_batch("right")
    grads, jaxprs = {}, {}
    for remat in ("none", "full", "dots"):
        graphdef, state = nnx.split(load_pretrained(tmp_path, remat=remat))
        grad_fn = jax.grad(_nll)
        jaxprs[remat] = str(jax.make_jaxpr(grad_fn, static_argnums=1)(state, graphdef, ids, mask))
        grads[remat] = jax.jit(grad_fn, static_argnums=1)(state, graphdef, ids, mask)
    # One checkpoint always wraps the chunked log-probs; remat "dots" adds one per layer with its
    # policy, "full" one custom_vjp per layer whose backward starts at an optimization barrier
    # (transformer.recomputed_in_backward).
    assert jaxprs["none"].count("remat") == 1
    assert jaxprs["full"].count("policy=None") == 1 and jaxprs["full"].count("optimization_barrier") == 2
    assert jaxprs["dots"].count("policy=DotsSaveable(only_if_no_batch_dims=True)") == 2
    reference = jax.tree.leaves(grads["none"])
    assert sum(float(jnp.abs(g).sum()) for g in reference) > 0
    for remat in ("full", "dots"):
        for a, b in zip(reference, jax.tree.leaves(grads[remat])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)


def _naive_logps(hidden, weights, targets):
    logits = jnp.einsum("bch,hv->bcv", hidden, weights)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]


def test_chunked_logps_values_and_gradients():
    rng = np.random.RandomState(0)
    hidden = jnp.asarray(rng.randn(2, 11, 16), jnp.float32)
    weights = jnp.asarray(rng.randn(16, 50) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.randint(0, 50, (2, 11)))
    cotangent = jnp.asarray(rng.randn(2, 11), jnp.float32)
    expected, naive_vjp = jax.vjp(lambda h, w: _naive_logps(h, w, targets), hidden, weights)
    for chunk in (1, 4, 11, 64):
        got, vjp = jax.vjp(lambda h, w: logps_from_hidden(h, w, targets, chunk), hidden, weights)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
        for g, e in zip(vjp(cotangent), naive_vjp(cotangent)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-5)


def test_chunked_logps_with_hits_and_entropy():
    rng = np.random.RandomState(1)
    hidden = jnp.asarray(rng.randn(2, 11, 16), jnp.float32)
    weights = jnp.asarray(rng.randn(16, 50) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.randint(0, 50, (2, 11)))
    logits = np.asarray(jnp.einsum("bch,hv->bcv", hidden, weights), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for chunk in (4, 64):
        logps, hits, entropy = logps_from_hidden(hidden, weights, targets, chunk, return_hits=True, return_entropy=True)
        np.testing.assert_allclose(np.asarray(logps), np.asarray(_naive_logps(hidden, weights, targets)), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(hits), logits.argmax(-1) == np.asarray(targets))
        np.testing.assert_allclose(np.asarray(entropy), -(probs * np.log(probs)).sum(-1), atol=1e-5)
    only_entropy = logps_from_hidden(hidden, weights, targets, 4, return_entropy=True)
    assert len(only_entropy) == 2


def test_chunked_logps_backward_never_holds_all_logits():
    batch, targets, features, vocab = 2, 1024, 16, 32768
    full_logits_bytes = batch * targets * vocab * 4

    def loss(hidden, weights, target_ids):
        return logps_from_hidden(hidden, weights, target_ids, chunk_size=128).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
        jax.ShapeDtypeStruct((batch, targets, features), jnp.float32),
        jax.ShapeDtypeStruct((features, vocab), jnp.float32),
        jax.ShapeDtypeStruct((batch, targets), jnp.int32),
    ).compile()
    # Two chunks of logits (forward + recomputed) at most: 128 / 1024 of the full size, times 2.
    assert compiled.memory_analysis().temp_size_in_bytes < full_logits_bytes / 3


def test_chunked_logps_of_row_sharded_targets_project_each_devices_own_rows():
    """Under data parallelism every device projects its own rows: no all-gather of the
    hidden states (chunks cut from the flattened rows made XLA gather every row onto
    every device, 8x the projection work on 8 devices), and the same values and gradients."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxalign.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=8))
    rng = np.random.RandomState(2)
    hidden = jnp.asarray(rng.randn(8, 24, 16), jnp.float32)
    weights = jnp.asarray(rng.randn(16, 50) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.randint(0, 50, (8, 24)))

    def loss(h, w, t):
        return jnp.sum(logps_from_hidden(h, w, t, chunk_size=32) * jnp.arange(24.0))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = (jax.device_put(hidden, rows), jax.device_put(weights, NamedSharding(mesh, PartitionSpec())),
               jax.device_put(targets, rows))
    hlo = grad.lower(*sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    (value, grads), (expected_value, expected_grads) = grad(*sharded), grad(hidden, weights, targets)
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-6)
    for got, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert grads[0].sharding.is_equivalent_to(rows, 3)


def test_chunks_split_each_rows_targets_evenly_within_the_chunk_size():
    assert chunk_tokens(1, 1024) == 256  # 4 full chunks
    assert chunk_tokens(1, 832) == 208  # 4 chunks of 208, not 4 x 256 = 1,024 projected slots
    assert chunk_tokens(3, 100) == 150  # 2 x 50 a row, not 2 x 85
    assert chunk_tokens(512, 10) == 512  # rows past chunk_size: one target a row
    for batch in (1, 2, 3, 7, 16, 300):
        for length in (1, 5, 64, 100, 257, 1000):
            per_row = chunk_tokens(batch, length) // batch
            chunks = -(-length // per_row)
            assert batch * per_row <= max(256, batch) and chunks * per_row - length < chunks
