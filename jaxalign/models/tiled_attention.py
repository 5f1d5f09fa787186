"""Block-sparse attention over packed rows: scores only on the tiles that can hold a visible entry.

A packed row holds several examples, and a rejected reply never sees the
chosen one, so most of a row's ``[L, L]`` score matrix is masked (about 90% on
HH-RLHF rows of 1,024 tokens). Rows are cut into tiles of ``T`` tokens, and the
batch lists, per row, the (query tile, key tile) pairs that hold any visible
score: ``tile_pairs`` ``[R, P, 2]`` int32, -1 in unused slots (built on the
host by ``jaxalign.data.tile_pairs``). Attention computes
the ``[T, T]`` scores of those pairs only, and takes one softmax over all the
pairs of a query tile, so every real token gets exactly the output of dense
masked attention. A query tile with no pair (row padding) outputs zeros.

The pairs are streamed in chunks of a few pairs (a loop over the pair axis),
the way flash attention streams key blocks: one pass keeps each query's
running maximum score and sums ``exp(score - max)`` and the weighted values
into the query tiles, rescaling a tile's sums when a chunk raises its
maximum (the online softmax), and the backward pass recomputes each chunk's
scores from the saved log-sum-exp (``jax.custom_vjp``) instead of storing
them, in chunks half as big; the loop stops at the chunk holding the last
used pair of any row. Why chunks:
computed whole, every intermediate is ``[R, kv_heads, P, group, T, T]`` (32
MiB for 4 rows of 1,024 tokens and 8 heads), far past the CPU's caches, and
XLA:CPU then runs the small batched matmuls at a tenth of its matmul rate; a
chunk of ~2 MiB stays in cache (forward + backward 2.4x faster at 1,024
tokens, docs/benchmarks.md). The loop runs over pairs, never over rows or
heads, so it shards over rows (data parallelism) and heads (tensor
parallelism) like the rest of the step.
Scores are laid out with the head axes ahead of the tile axes: XLA's CPU
batched matmul runs that layout about 2.5x faster than a tokens-first one.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

_F32 = jnp.float32
# Score tiles ([T, T] per head and pair) computed per chunk: about 2 MiB of
# float32 scores at T = 64, which stays in a CPU core's cache. The backward
# holds three score-sized intermediates per pair (probabilities, their
# gradient, the scores' gradient) against the forward's one, so its chunks
# are half as big (about 6% faster forward + backward, docs/dev-notes/speed.md).
CHUNK_SCORE_TILES = 128
BACKWARD_CHUNK_SCORE_TILES = 64


class TileLayout(NamedTuple):
    """What every layer's tiled attention needs, built once per forward.

    ``query_tile``/``key_tile`` ``[R, P]`` int32 (0 for an unused pair),
    ``mask`` ``[R, P, T, T]`` bool (query, key) within each pair (all false
    for an unused pair) and ``pair_span`` ``[]`` int32, the slots up to the
    last used pair of any row: attention stops there (unused slots trail the
    used ones, so on HH-RLHF about a fifth of P is skipped).
    """

    query_tile: jax.Array
    key_tile: jax.Array
    mask: jax.Array
    pair_span: jax.Array

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
        return tiled_attention(q, k, v, self, scale)


def _tiles_of(values: jax.Array, tile: int, index: jax.Array) -> jax.Array:
    """``values`` ``[R, L]`` -> the ``[R, P, T]`` tiles named by ``index`` ``[R, P]``."""
    rows, length = values.shape
    tiled = values.reshape(rows, length // tile, tile)
    return jnp.take_along_axis(tiled, index[:, :, None], axis=1)


def tile_layout(
    tile_pairs: jax.Array,
    tile: int,
    segment_ids: jax.Array,
    branch_ids: jax.Array | None,
    positions: jax.Array,
    sliding_window: int | None = None,
) -> TileLayout:
    """The per-pair masks of ``jaxalign.batch.attention_mask`` (optionally
    narrowed to a sliding window in positions, as ``packed_mask`` does).

    tile_pairs ``[R, P, 2]``; segment/branch ids and positions ``[R, L]`` with
    L a multiple of ``tile``.
    """
    rows, length = segment_ids.shape
    if length % tile:
        raise ValueError(f"tiled attention needs a row length that is a multiple of {tile}, got {length}")
    if branch_ids is None:
        branch_ids = jnp.zeros_like(segment_ids)
    used = tile_pairs[..., 0] >= 0
    query_tile = jnp.where(used, tile_pairs[..., 0], 0)
    key_tile = jnp.where(used, tile_pairs[..., 1], 0)

    offsets = jnp.arange(tile)
    query_index = (query_tile[..., None] * tile + offsets)[..., :, None]
    key_index = (key_tile[..., None] * tile + offsets)[..., None, :]
    query_segment = _tiles_of(segment_ids, tile, query_tile)[..., :, None]
    key_segment = _tiles_of(segment_ids, tile, key_tile)[..., None, :]
    query_branch = _tiles_of(branch_ids, tile, query_tile)[..., :, None]
    key_branch = _tiles_of(branch_ids, tile, key_tile)[..., None, :]
    mask = (
        used[..., None, None]
        & (key_index <= query_index)
        & (query_segment == key_segment)
        & (query_segment != 0)
        & ((key_branch == 0) | (key_branch == query_branch))
    )
    if sliding_window is not None:
        distance = _tiles_of(positions, tile, query_tile)[..., :, None] - _tiles_of(positions, tile, key_tile)[..., None, :]
        mask = mask & (distance < sliding_window)
    slots = jnp.arange(1, tile_pairs.shape[1] + 1, dtype=jnp.int32)
    pair_span = jnp.max(jnp.where(used, slots, 0))
    return TileLayout(query_tile, key_tile, mask, pair_span)


def _pick_tiles(tiles: jax.Array, index: jax.Array) -> jax.Array:
    """tiles ``[R, kv, n, ...]``, index ``[R, C]`` -> ``[R, kv, C, ...]``."""
    shaped = index.reshape(index.shape[0], 1, index.shape[1], *([1] * (tiles.ndim - 3)))
    return jnp.take_along_axis(tiles, shaped, axis=2)


def _into_tiles(totals: jax.Array, index: jax.Array, values: jax.Array, combine: str = "add") -> jax.Array:
    """totals ``[R, n, kv, ...]`` combined (``add``, ``max`` or ``set``) with values ``[R, kv, C, ...]``
    at tiles index ``[R, C]``.

    Totals keep the tile axis next to the rows so the scatter writes whole
    contiguous tiles; only the chunk-sized values are transposed. The rows are
    a batch dimension of the scatter (vmap), so a row-sharded batch stays
    sharded: indexing rows with an iota instead makes XLA gather every row.
    """
    scatter = lambda total, tiles, new: getattr(total.at[tiles], combine)(new)  # noqa: E731
    return jax.vmap(scatter)(totals, index, jnp.moveaxis(values, 1, 2))


def _over_chunks(step, init, layout: TileLayout, size: int):
    """Folds ``step(carry, (query_tile [R, C], key_tile [R, C], mask [R, C, T, T]))``
    over the pair axis in chunks of ``size``, up to the chunk holding the last used pair."""
    rows, pairs = layout.query_tile.shape
    cut = lambda x: jnp.moveaxis(x.reshape(rows, pairs // size, size, *x.shape[2:]), 1, 0)  # noqa: E731
    chunks = (cut(layout.query_tile), cut(layout.key_tile), cut(layout.mask))
    count = (layout.pair_span + size - 1) // size

    def body(index, carry):
        return step(carry, tuple(jax.lax.dynamic_index_in_dim(x, index, keepdims=False) for x in chunks))

    return jax.lax.fori_loop(0, count, body, init)


def _chunk_scores(q_tiles, k_tiles, query_tile, key_tile, mask, scale):
    """Masked scores ``[R, kv, C, g, T, T]`` of one chunk, and its q/k tiles."""
    q_pairs = _pick_tiles(q_tiles, query_tile)  # [R, kv, C, g, T, d]
    k_pairs = _pick_tiles(k_tiles, key_tile)  # [R, kv, C, T, d]
    scores = jnp.einsum("rkcgsd,rkctd->rkcgst", q_pairs, k_pairs, preferred_element_type=_F32) * scale
    # -inf makes exp give exact zeros; every row is shifted by a finite value.
    return jnp.where(mask[:, None, :, None], scores, -jnp.inf), q_pairs, k_pairs


def _tile_values(totals: jax.Array, index: jax.Array) -> jax.Array:
    """totals ``[R, n, kv, ...]`` at tiles index ``[R, C]`` -> ``[R, kv, C, ...]``."""
    return jnp.moveaxis(jax.vmap(lambda total, tiles: total[tiles])(totals, index), 1, 2)


def _streamed_forward(q_tiles, k_tiles, v_tiles, layout, scale, chunk):
    """Output tiles ``[R, kv, n, g, T, d]`` and each query's log-sum-exp ``[R, kv, n, g, T]``.

    One pass, flash attention's online softmax: each query keeps its running
    maximum, and a chunk that raises it first rescales that query's sums.
    Only the chunk's query tiles are rescaled (gathered, scaled and written
    back; a tile listed twice in a chunk gets the same value twice), so a
    chunk costs its own size, not the row's.
    """
    rows, kv_heads, num_tiles, group, tile, dim = q_tiles.shape

    def accumulate(totals, pairs):
        running_max, denominators, weighted = totals
        query_tile, key_tile, mask = pairs
        scores, _, _ = _chunk_scores(q_tiles, k_tiles, query_tile, key_tile, mask, scale)
        old_max = _tile_values(running_max, query_tile)
        running_max = _into_tiles(running_max, query_tile, jnp.max(scores, axis=-1), "max")
        new_max = _tile_values(running_max, query_tile)
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # queries that see nothing yet: any finite shift
        rescale = jnp.exp(old_max - shift)  # 0 where nothing was summed yet (old_max = -inf)
        denominators = _into_tiles(denominators, query_tile, _tile_values(denominators, query_tile) * rescale, "set")
        weighted = _into_tiles(weighted, query_tile, _tile_values(weighted, query_tile) * rescale[..., None], "set")
        probs = jnp.exp(scores - shift[..., None])
        values = jnp.einsum("rkcgst,rkctd->rkcgsd", probs.astype(v_tiles.dtype), _pick_tiles(v_tiles, key_tile),
                            preferred_element_type=_F32)
        return (running_max, _into_tiles(denominators, query_tile, jnp.sum(probs, axis=-1)),
                _into_tiles(weighted, query_tile, values))

    init = (jnp.full((rows, num_tiles, kv_heads, group, tile), -jnp.inf, _F32),
            jnp.zeros((rows, num_tiles, kv_heads, group, tile), _F32),
            jnp.zeros((rows, num_tiles, kv_heads, group, tile, dim), _F32))
    running_max, denominators, weighted = (jnp.moveaxis(x, 1, 2) for x in _over_chunks(accumulate, init, layout, chunk))
    seen = denominators > 0
    out = (weighted / jnp.where(seen, denominators, 1.0)[..., None]).astype(q_tiles.dtype)
    log_sum_exp = jnp.where(seen, running_max + jnp.log(jnp.where(seen, denominators, 1.0)), 0.0)
    return out, log_sum_exp


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _streamed(q_tiles, k_tiles, v_tiles, layout, scale, chunk, backward_chunk):
    return _streamed_forward(q_tiles, k_tiles, v_tiles, layout, scale, chunk)[0]


def _streamed_fwd(q_tiles, k_tiles, v_tiles, layout, scale, chunk, backward_chunk):
    out, log_sum_exp = _streamed_forward(q_tiles, k_tiles, v_tiles, layout, scale, chunk)
    return out, (q_tiles, k_tiles, v_tiles, layout, out, log_sum_exp)


def _streamed_bwd(scale, chunk, backward_chunk, saved, d_out):
    """Flash attention's backward per chunk: probabilities from the saved log-sum-exp,
    d_scores = p * (d_p - rowsum(d_out * out)), scaled."""
    q_tiles, k_tiles, v_tiles, layout, out, log_sum_exp = saved
    row_dot = jnp.sum(d_out.astype(_F32) * out.astype(_F32), axis=-1)  # [R, kv, n, g, T]

    def accumulate(grads, pairs):
        d_q, d_k, d_v = grads
        query_tile, key_tile, mask = pairs
        scores, q_pairs, k_pairs = _chunk_scores(q_tiles, k_tiles, query_tile, key_tile, mask, scale)
        probs = jnp.exp(scores - _pick_tiles(log_sum_exp, query_tile)[..., None])
        d_out_pairs = _pick_tiles(d_out, query_tile)
        d_v_pairs = jnp.einsum("rkcgst,rkcgsd->rkctd", probs.astype(d_out.dtype), d_out_pairs, preferred_element_type=_F32)
        d_probs = jnp.einsum("rkcgsd,rkctd->rkcgst", d_out_pairs, _pick_tiles(v_tiles, key_tile), preferred_element_type=_F32)
        d_scores = probs * (d_probs - _pick_tiles(row_dot, query_tile)[..., None]) * scale
        d_q_pairs = jnp.einsum("rkcgst,rkctd->rkcgsd", d_scores.astype(k_pairs.dtype), k_pairs, preferred_element_type=_F32)
        d_k_pairs = jnp.einsum("rkcgst,rkcgsd->rkctd", d_scores.astype(q_pairs.dtype), q_pairs, preferred_element_type=_F32)
        return (_into_tiles(d_q, query_tile, d_q_pairs), _into_tiles(d_k, key_tile, d_k_pairs),
                _into_tiles(d_v, key_tile, d_v_pairs))

    tiles_next_to_rows = lambda shape: (shape[0], shape[2], shape[1], *shape[3:])  # noqa: E731
    zeros = tuple(jnp.zeros(tiles_next_to_rows(x.shape), _F32) for x in (q_tiles, k_tiles, v_tiles))
    grads = _over_chunks(accumulate, zeros, layout, backward_chunk)
    d_q, d_k, d_v = (jnp.moveaxis(g, 1, 2).astype(x.dtype) for g, x in zip(grads, (q_tiles, k_tiles, v_tiles)))
    return d_q, d_k, d_v, jax.tree.map(lambda _: None, layout)


_streamed.defvjp(_streamed_fwd, _streamed_bwd)


def chunk_pairs(rows: int, pairs: int, score_tiles_per_pair: int, target: int = CHUNK_SCORE_TILES) -> int:
    """Pairs per chunk: the largest divisor of ``pairs`` whose chunk holds at most
    ``target`` score tiles (``rows * heads`` per pair), at least 1. ``rows`` is
    the global batch as the jitted program sees it, so on a sharded mesh each
    device's chunk errs small, which costs little (128 vs 64 tiles: 4%)."""
    most = max(1, target // max(1, rows * score_tiles_per_pair))
    return max(size for size in range(1, min(most, pairs) + 1) if pairs % size == 0)


def tiled_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, layout: TileLayout, scale: float, chunk: int | None = None
) -> jax.Array:
    """q ``[b, s, heads, d]``, k/v ``[b, s, kv_heads, d]`` -> ``[b, s, heads, d]``.

    Scores, softmax and every sum over pairs in float32; the weighted sums of
    values take the probabilities in v's dtype, as ``dot_product_attention``
    does. ``chunk``: pairs per loop step, forward and backward (a divisor of
    P; default ``chunk_pairs``, with a smaller target for the backward); it
    changes speed, not results beyond float rounding.
    """
    batch, seq, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    tile = layout.mask.shape[-1]
    num_tiles = seq // tile
    pairs = layout.query_tile.shape[1]
    if chunk is not None and pairs % chunk:
        raise ValueError(f"tiled attention: chunk {chunk} does not divide the {pairs} tile pairs of a row")
    forward_chunk = chunk or chunk_pairs(batch, pairs, heads)
    backward_chunk = chunk or chunk_pairs(batch, pairs, heads, BACKWARD_CHUNK_SCORE_TILES)
    # Head-major tiles [R, kv, n, (g,) T, d].
    q_tiles = q.reshape(batch, num_tiles, tile, kv_heads, group, dim).transpose(0, 3, 1, 4, 2, 5)
    k_tiles = k.reshape(batch, num_tiles, tile, kv_heads, dim).transpose(0, 3, 1, 2, 4)
    v_tiles = v.reshape(batch, num_tiles, tile, kv_heads, dim).transpose(0, 3, 1, 2, 4)
    out = _streamed(q_tiles, k_tiles, v_tiles, layout, scale, forward_chunk, backward_chunk)
    return out.transpose(0, 2, 4, 1, 3, 5).reshape(batch, seq, heads, dim)
