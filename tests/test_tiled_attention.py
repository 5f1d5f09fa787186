"""Block-sparse attention over tile pairs equals dense masked attention on every real token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.batch import ATTENTION_TILE
from jaxalign.data.packing import batch_shape, pad_batch
from jaxalign.data.tile_pairs import attention_tile_pairs
from jaxalign.models import load_pretrained
from jaxalign.models.attention import dot_product_attention, packed_mask
import jaxalign.models.tiled_attention as tiled_attention_module
from jaxalign.models.tiled_attention import chunk_pairs, tile_layout, tiled_attention
from hlo_fixtures import collectives
from model_fixtures import make_causal_lm


def random_packed_layout(rng: np.random.Generator, rows: int, length: int, fill: float = 0.9):
    """Rows of [prompt | chosen | rejected] examples of random lengths, then padding."""
    segments = np.zeros((rows, length), np.int32)
    branches = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for r in range(rows):
        start, slot = 0, 1
        while start < length * fill:
            stop = min(length, start + int(rng.integers(2, max(3, length // 3))))
            prompt_end, chosen_end = sorted(rng.integers(start + 1, stop + 1, size=2))
            segments[r, start:stop] = slot
            branches[r, prompt_end:chosen_end], branches[r, chosen_end:stop] = 1, 2
            positions[r, start:chosen_end] = np.arange(chosen_end - start)
            positions[r, chosen_end:stop] = np.arange(prompt_end - start, prompt_end - start + stop - chosen_end)
            start, slot = stop, slot + 1
    return segments, branches, positions


def brute_force_visible_tiles(segments, branches, tile):
    rows, length = segments.shape
    mask = np.asarray(packed_mask(jnp.asarray(segments), jnp.asarray(branches), jnp.zeros_like(segments)))
    mask = mask & (segments != 0)[:, :, None]
    return mask.reshape(rows, length // tile, tile, length // tile, tile).any(axis=(2, 4))


@pytest.mark.parametrize("seed", range(4))
def test_tile_pairs_are_exactly_the_tiles_with_a_visible_score(seed):
    rng = np.random.default_rng(seed)
    tile = int(rng.choice([4, 8, 16]))
    segments, branches, _ = random_packed_layout(rng, rows=3, length=tile * int(rng.integers(2, 9)))
    pairs = attention_tile_pairs(segments, branches, tile)
    want = brute_force_visible_tiles(segments, branches, tile)
    num_tiles = segments.shape[1] // tile
    assert pairs.shape[1] % num_tiles == 0 and pairs.shape[1] >= want.sum(axis=(1, 2)).max()
    for r in range(3):
        used = pairs[r][pairs[r, :, 0] >= 0]
        got = np.zeros_like(want[r])
        got[used[:, 0], used[:, 1]] = True
        np.testing.assert_array_equal(got, want[r])
        assert len(used) == want[r].sum()  # no pair listed twice
        assert (pairs[r, len(used):] == -1).all()


def _attention_inputs(seed: int, tile: int, heads: int = 4, kv_heads: int = 2, dim: int = 8):
    rng = np.random.default_rng(seed)
    segments, branches, positions = random_packed_layout(rng, rows=2, length=tile * 6)
    q = jnp.asarray(rng.normal(size=(2, tile * 6, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, tile * 6, kv_heads, dim)), jnp.float32) for _ in range(2))
    return (segments, branches, positions), (q, k, v)


@pytest.mark.parametrize("window,chunk,backward_tiles", [(None, None, None), (5, None, None), (None, 1, None),
                                                         (5, 4, None), (None, None, 1)])
def test_tiled_attention_equals_dense_attention_and_its_gradients(window, chunk, backward_tiles, monkeypatch):
    """Also when a query tile's pairs fall in different chunks of the stream (chunk 1, 4), and
    when the backward streams smaller chunks than the forward (its own target, here 1 pair)."""
    if backward_tiles is not None:
        monkeypatch.setattr(tiled_attention_module, "BACKWARD_CHUNK_SCORE_TILES", backward_tiles)
    tile = 4
    (segments, branches, positions), (q, k, v) = _attention_inputs(seed=3, tile=tile)
    real = jnp.asarray(segments != 0)[:, :, None, None]
    pairs = jnp.asarray(attention_tile_pairs(segments, branches, tile))
    layout = tile_layout(pairs, tile, jnp.asarray(segments), jnp.asarray(branches), jnp.asarray(positions), window)
    dense_mask = packed_mask(jnp.asarray(segments), jnp.asarray(branches), jnp.asarray(positions), window)

    def objective(attend, mask):
        # A nonlinear read-out of real tokens only: padding outputs are unspecified.
        return lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v, mask, 0.3)) * real)

    def tiled(q, k, v, layout, scale):
        return tiled_attention(q, k, v, layout, scale, chunk)

    dense_out = dot_product_attention(q, k, v, dense_mask, 0.3)
    tiled_out = tiled(q, k, v, layout, 0.3)
    np.testing.assert_allclose(np.asarray(tiled_out * real), np.asarray(dense_out * real), atol=2e-6)
    assert np.isfinite(np.asarray(tiled_out)).all()
    dense_grads = jax.grad(objective(dot_product_attention, dense_mask), argnums=(0, 1, 2))(q, k, v)
    tiled_grads = jax.grad(objective(tiled, layout), argnums=(0, 1, 2))(q, k, v)
    for dense_grad, tiled_grad in zip(dense_grads, tiled_grads):
        np.testing.assert_allclose(np.asarray(tiled_grad), np.asarray(dense_grad), atol=1e-5)


def test_bfloat16_tiled_attention_is_as_close_to_float32_as_dense_attention_is():
    tile = 4
    (segments, branches, positions), (q, k, v) = _attention_inputs(seed=4, tile=tile)
    real = jnp.asarray(segments != 0)[:, :, None, None]
    pairs = jnp.asarray(attention_tile_pairs(segments, branches, tile))
    layout = tile_layout(pairs, tile, jnp.asarray(segments), jnp.asarray(branches), jnp.asarray(positions))
    dense_mask = packed_mask(jnp.asarray(segments), jnp.asarray(branches), jnp.asarray(positions))
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]

    def loss(attend, mask):
        return lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v, mask, 0.3).astype(jnp.float32)) * real)

    exact = jax.grad(loss(dot_product_attention, dense_mask), argnums=(0, 1, 2))(q, k, v)
    dense = jax.grad(loss(dot_product_attention, dense_mask), argnums=(0, 1, 2))(*half)
    tiled = jax.grad(loss(lambda *a: tiled_attention(*a, chunk=1), layout), argnums=(0, 1, 2))(*half)
    for want, ref, got in zip(exact, dense, tiled):
        assert got.dtype == jnp.bfloat16
        bound = max(2 * float(jnp.max(jnp.abs(ref.astype(jnp.float32) - want))), 1e-2)
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) <= bound


def test_chunk_sizes_divide_the_pairs_and_bound_the_scores_in_cache():
    assert chunk_pairs(rows=4, pairs=64, score_tiles_per_pair=8) == 4
    assert chunk_pairs(rows=1, pairs=48, score_tiles_per_pair=8) == 16
    assert chunk_pairs(rows=64, pairs=48, score_tiles_per_pair=8) == 1
    assert chunk_pairs(rows=2, pairs=30, score_tiles_per_pair=8) == 6  # 8 would not divide 30
    (segments, branches, positions), (q, k, v) = _attention_inputs(seed=1, tile=4)
    pairs = attention_tile_pairs(segments, branches, 4)
    layout = tile_layout(jnp.asarray(pairs), 4, *(jnp.asarray(x) for x in (segments, branches, positions)))
    with pytest.raises(ValueError, match="does not divide"):
        tiled_attention(q, k, v, layout, 0.3, chunk=pairs.shape[1] + 1)


def test_unused_pair_slots_and_padding_rows_change_nothing():
    tile = 4
    (segments, branches, positions), (q, k, v) = _attention_inputs(seed=5, tile=tile)
    batch = {"input_ids": segments, "positions": positions, "segment_ids": segments, "branch_ids": branches,
             "target_index": np.zeros((1, 4), np.int32), "tile_pairs": attention_tile_pairs(segments, branches, tile)}
    rows, length, width, count = batch_shape(batch)
    padded = pad_batch(batch, (rows + 2, length, width, count + 7))
    assert (padded["tile_pairs"][:, count:] == -1).all() and (padded["tile_pairs"][rows:] == -1).all()
    pad_rows = lambda x: jnp.concatenate([x, jnp.zeros((2,) + x.shape[1:], x.dtype)])  # noqa: E731

    def run(tile_pairs, q, k, v, segments, branches, positions):
        layout = tile_layout(jnp.asarray(tile_pairs), tile, jnp.asarray(segments), jnp.asarray(branches),
                             jnp.asarray(positions))
        return tiled_attention(q, k, v, layout, 0.5)

    plain = run(batch["tile_pairs"], q, k, v, segments, branches, positions)
    widened = run(padded["tile_pairs"], pad_rows(q), pad_rows(k), pad_rows(v), padded["segment_ids"],
                  padded["branch_ids"], padded["positions"])
    np.testing.assert_allclose(np.asarray(widened[:rows]), np.asarray(plain), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(widened[rows:]), 0.0)


@pytest.mark.parametrize("arch", ["mistral_sliding", "gpt2"])
def test_model_hidden_states_with_tile_pairs_equal_dense(arch, tmp_path):
    """A real decoder (Mistral's sliding window, GPT-2's learned positions) at the library's tile size."""
    make_causal_lm(arch, tmp_path, seed=2)
    model = load_pretrained(tmp_path)
    rng = np.random.default_rng(7)
    segments, branches, positions = random_packed_layout(rng, rows=2, length=2 * ATTENTION_TILE, fill=0.8)
    ids = jnp.asarray(np.where(segments > 0, rng.integers(1, 100, segments.shape), 0), jnp.int32)
    pairs = jnp.asarray(attention_tile_pairs(segments, branches, ATTENTION_TILE))
    args = (ids, jnp.asarray(positions), jnp.asarray(segments), jnp.asarray(branches))
    dense = jax.jit(lambda m, *a: m.hidden_states(*a))(model, *args)
    tiled = jax.jit(lambda m, *a: m.hidden_states(*a, pairs))(model, *args)
    real = segments != 0
    np.testing.assert_allclose(np.asarray(tiled)[real], np.asarray(dense)[real], atol=2e-5)


def test_sharded_rows_and_heads_stay_sharded_with_no_collectives():
    """Data parallelism shards rows and tensor parallelism heads; the streamed attention
    must compute each shard locally (a scatter indexed by a row iota would gather every row)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    rng = np.random.default_rng(0)
    segments, branches, positions = random_packed_layout(rng, rows=8, length=6 * 4)
    pairs = attention_tile_pairs(segments, branches, 4)
    place = lambda x, *spec: jax.device_put(jnp.asarray(x), NamedSharding(mesh, PartitionSpec(*spec)))  # noqa: E731
    q, k, v = (place(rng.normal(size=(8, 24, 4, 8)).astype(np.float32), "data", None, "tensor") for _ in range(3))
    ids = [place(x, "data") for x in (pairs, segments, branches, positions)]
    real = jnp.asarray(segments != 0)[:, :, None, None]

    def loss(q, k, v, tile_pairs, segments, branches, positions):
        layout = tile_layout(tile_pairs, 4, segments, branches, positions)
        return jnp.sum(jnp.sin(tiled_attention(q, k, v, layout, 0.3, chunk=2)) * real)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    compiled = grad.lower(q, k, v, *ids).compile().as_text()
    # Only the number of pair chunks to run (a scalar: the last used pair of any row) crosses devices.
    moved = collectives(compiled)
    assert all(shape == () for c in moved for shape in c.shapes), moved
    grads = grad(q, k, v, *ids)
    assert all(g.sharding.spec[:3] == ("data", None, "tensor") for g in grads)
    local = jax.grad(loss, argnums=(0, 1, 2))(*(np.asarray(x) for x in (q, k, v, *ids)))
    for got, want in zip(grads, local):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
