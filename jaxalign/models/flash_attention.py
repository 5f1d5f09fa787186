"""Flash attention over packed rows: a Pallas kernel for the forward and two for the backward.

The mask is ``jaxalign.batch.attention_mask`` computed inside the kernel from
per-token ids, never materialised: a query sees a key when the key is not
after it, both are in the same (non-padding) segment, and the key's branch is
0 (prompt) or the query's own (so a rejected reply does not see the chosen
one); every token sees itself, so no softmax row is empty. An optional
sliding window is measured in ``positions``, as ``packed_mask`` does.

Why our own kernel rather than ``jax.experimental.pallas.ops.gpu.attention``:
that kernel masks by segment equality and causal order only (no branches, no
diagonal for padding, no windows in positions) and has no grouped-query heads.

Block skipping: examples in a packed row are contiguous runs of one segment id,
so a query block needs only the key blocks from the start of its earliest
query's segment up to its own (causal), and a key block only the query blocks
from its own up to the end of its latest key's segment. Blocks inside that
range that the branch mask empties are computed and masked (no extra skip).
Segment ids that repeat in separate runs are still correct: a run's bounds are
those of the id's first and last token in the row.

Backward: a custom VJP with two kernels (FlashAttention-2's scheme): the
forward saves the per-query log-sum-exp, one kernel accumulates dq over key
blocks, another dk and dv over query blocks, each recomputing the
probabilities of its blocks. Memory stays O(seq) per head; the alternative
(forward kernel + an XLA backward) would build the ``[seq, seq]`` scores the
kernel exists to avoid. dk/dv come out per query head and are summed over the
heads of a kv group outside the kernel.

Written for Pallas's Triton lowering (whole-sequence key/value blocks, ``pl.ds``
slices in a ``fori_loop``; selected by the Triton compiler params); on CPU it
runs with ``interpret=True`` (for tests: slow). Not tried on TPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class FlashOptions:
    """Static settings of one kernel call (hashable: a ``custom_vjp`` non-differentiable argument)."""

    scale: float
    block_q: int = 64
    block_k: int = 64
    window: int | None = None
    interpret: bool = False
    num_warps: int = 4  # Triton launch settings (GPU); ignored in interpret mode
    num_stages: int = 2

    def compiler_params(self) -> pl_triton.CompilerParams:
        """Selects Pallas's Triton lowering on GPU (its default there is Mosaic GPU, which
        this kernel's style does not target)."""
        return pl_triton.CompilerParams(num_warps=self.num_warps, num_stages=self.num_stages)


def segment_bounds(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[rows, seq]`` int -> (first index, one past the last index) of each token's segment in its row.

    Padding (segment 0) sees only itself: its own index and index + 1. Ids
    outside ``[0, seq]`` fall back to the whole row (no skipping, still exact).
    """
    rows, length = segment_ids.shape
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    other = length + 1
    ids = jnp.where((segment_ids >= 0) & (segment_ids <= length), segment_ids, other)

    def per_row(idx, seg):
        first = jax.ops.segment_min(idx, seg, num_segments=length + 2)
        last = jax.ops.segment_max(idx, seg, num_segments=length + 2)
        return first[seg], last[seg] + 1

    start, end = jax.vmap(per_row)(index, ids)
    start = jnp.where(ids == other, 0, start)
    end = jnp.where(ids == other, length, end)
    padding = segment_ids == 0
    return jnp.where(padding, index, start), jnp.where(padding, index + 1, end)


def _visible(q_index, q_seg, q_branch, q_pos, k_index, k_seg, k_branch, k_pos, window):
    """Query-side ids ``[bq]``, key-side ``[bk]`` -> the ``[bq, bk]`` mask of ``attention_mask``."""
    mask = (
        (k_index[None, :] <= q_index[:, None])
        & (q_seg[:, None] == k_seg[None, :])
        & (q_seg[:, None] != 0)
        & ((k_branch[None, :] == 0) | (k_branch[None, :] == q_branch[:, None]))
    )
    if window is not None:
        mask = mask & (q_pos[:, None] - k_pos[None, :] < window)
    return mask | (q_index[:, None] == k_index[None, :])


def _dot(a, b, contract=((1,), (0,))):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _dot_t(a, b):  # a @ b.T
    return _dot(a, b, ((1,), (1,)))


def _t_dot(a, b):  # a.T @ b
    return _dot(a, b, ((0,), (0,)))


def _arange(n):
    return lax.broadcasted_iota(jnp.int32, (n,), 0)


def _masked_scores(q, k, q_meta, k_meta, options):
    scores = _dot_t(q, k) * options.scale
    return jnp.where(_visible(*q_meta, *k_meta, options.window), scores, MASK_VALUE)


def _forward_kernel(q_ref, k_ref, v_ref, qseg, qbr, qpos, qstart, kseg, kbr, kpos, o_ref, lse_ref, *, options):
    block_q, block_k = options.block_q, options.block_k
    i = pl.program_id(2)
    q = q_ref[...]
    q_meta = (i * block_q + _arange(block_q), qseg[...], qbr[...], qpos[...])
    first = lax.div(jnp.min(qstart[...]), block_k)
    stop = lax.div((i + 1) * block_q + block_k - 1, block_k)

    def body(j, carry):
        m, l, acc = carry
        keys = pl.ds(j * block_k, block_k)
        k_meta = (j * block_k + _arange(block_k), kseg[keys], kbr[keys], kpos[keys])
        v = v_ref[keys, :]
        scores = _masked_scores(q, k_ref[keys, :], q_meta, k_meta, options)
        m_new = jnp.maximum(m, jnp.max(scores, axis=1))
        # Until a query meets a visible key, m stays at MASK_VALUE and these sums hold
        # garbage; the first visible key makes alpha exactly 0 and wipes them.
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[:, None])
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
        return m_new, l, acc

    init = (
        jnp.full((block_q,), MASK_VALUE, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.zeros((block_q, q.shape[-1]), jnp.float32),
    )
    m, l, acc = lax.fori_loop(first, stop, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg, qbr, qpos, qstart, kseg, kbr, kpos, dq_ref,
               *, options):
    block_q, block_k = options.block_q, options.block_k
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_meta = (i * block_q + _arange(block_q), qseg[...], qbr[...], qpos[...])
    first = lax.div(jnp.min(qstart[...]), block_k)
    stop = lax.div((i + 1) * block_q + block_k - 1, block_k)

    def body(j, dq):
        keys = pl.ds(j * block_k, block_k)
        k_meta = (j * block_k + _arange(block_k), kseg[keys], kbr[keys], kpos[keys])
        k = k_ref[keys, :]
        p = jnp.exp(_masked_scores(q, k, q_meta, k_meta, options) - lse[:, None])
        dp = _dot_t(do, v_ref[keys, :])
        ds = p * (dp - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(first, stop, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * options.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg, qbr, qpos, kseg, kbr, kpos, kend, dk_ref, dv_ref,
                *, options):
    block_q, block_k = options.block_q, options.block_k
    j = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    k_meta = (j * block_k + _arange(block_k), kseg[...], kbr[...], kpos[...])
    first = lax.div(j * block_k, block_q)
    stop = lax.div(jnp.max(kend[...]) + block_q - 1, block_q)

    def body(i, carry):
        dk, dv = carry
        queries = pl.ds(i * block_q, block_q)
        q_meta = (i * block_q + _arange(block_q), qseg[queries], qbr[queries], qpos[queries])
        q, do = q_ref[queries, :], do_ref[queries, :]
        p = jnp.exp(_masked_scores(q, k, q_meta, k_meta, options) - lse_ref[queries][:, None])
        dv = dv + _t_dot(p.astype(do.dtype), do)
        ds = p * (_dot_t(do, v) - delta_ref[queries][:, None])
        return dk + _t_dot(ds.astype(q.dtype), q), dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(first, stop, body, (zeros, zeros))
    dk_ref[...] = (dk * options.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(seq: int, dim: int, group: int, options: FlashOptions):
    """BlockSpecs over grid (batch, head, block): a block of rows, the whole row, per-head vectors."""
    def rows_of(block, head_axis):
        return pl.BlockSpec((None, block, None, dim), lambda b, h, n: (b, n, head_axis(h), 0))

    query_head = lambda h: h  # noqa: E731
    kv_head = lambda h: lax.div(h, group)  # noqa: E731
    return dict(
        q_block=rows_of(options.block_q, query_head),
        k_block=rows_of(options.block_k, kv_head),
        k_block_per_query_head=rows_of(options.block_k, query_head),
        q_all=pl.BlockSpec((None, seq, None, dim), lambda b, h, n: (b, 0, h, 0)),
        kv_all=pl.BlockSpec((None, seq, None, dim), lambda b, h, n: (b, 0, lax.div(h, group), 0)),
        ids_q=pl.BlockSpec((None, options.block_q), lambda b, h, n: (b, n)),
        ids_k=pl.BlockSpec((None, options.block_k), lambda b, h, n: (b, n)),
        ids_all=pl.BlockSpec((None, seq), lambda b, h, n: (b, 0)),
        stat_q=pl.BlockSpec((None, None, options.block_q), lambda b, h, n: (b, h, n)),
        stat_all=pl.BlockSpec((None, None, seq), lambda b, h, n: (b, h, 0)),
    )


def _forward(q, k, v, ids, options: FlashOptions):
    batch, seq, heads, dim = q.shape
    group = heads // k.shape[2]
    segment_ids, branch_ids, positions, starts, _ = ids
    s = _specs(seq, dim, group, options)
    return pl.pallas_call(
        functools.partial(_forward_kernel, options=options),
        grid=(batch, heads, seq // options.block_q),
        in_specs=[s["q_block"], s["kv_all"], s["kv_all"], s["ids_q"], s["ids_q"], s["ids_q"], s["ids_q"],
                  s["ids_all"], s["ids_all"], s["ids_all"]],
        out_specs=[s["q_block"], s["stat_q"]],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, seq), jnp.float32)],
        interpret=options.interpret,
        compiler_params=options.compiler_params(),
        name="packed_flash_forward",
    )(q, k, v, segment_ids, branch_ids, positions, starts, segment_ids, branch_ids, positions)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, ids, options):
    return _forward(q, k, v, ids, options)[0]


def _flash_fwd(q, k, v, ids, options):
    out, lse = _forward(q, k, v, ids, options)
    return out, (q, k, v, ids, out, lse)


def _flash_bwd(options, residuals, d_out):
    q, k, v, ids, out, lse = residuals
    batch, seq, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    segment_ids, branch_ids, positions, starts, ends = ids
    delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), d_out.astype(jnp.float32))
    s = _specs(seq, dim, group, options)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, options=options),
        grid=(batch, heads, seq // options.block_q),
        in_specs=[s["q_block"], s["kv_all"], s["kv_all"], s["q_block"], s["stat_q"], s["stat_q"],
                  s["ids_q"], s["ids_q"], s["ids_q"], s["ids_q"], s["ids_all"], s["ids_all"], s["ids_all"]],
        out_specs=s["q_block"],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=options.interpret,
        compiler_params=options.compiler_params(),
        name="packed_flash_dq",
    )(q, k, v, d_out, lse, delta, segment_ids, branch_ids, positions, starts, segment_ids, branch_ids, positions)
    per_head = jax.ShapeDtypeStruct((batch, seq, heads, dim), k.dtype)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, options=options),
        grid=(batch, heads, seq // options.block_k),
        in_specs=[s["q_all"], s["k_block"], s["k_block"], s["q_all"], s["stat_all"], s["stat_all"],
                  s["ids_all"], s["ids_all"], s["ids_all"], s["ids_k"], s["ids_k"], s["ids_k"], s["ids_k"]],
        out_specs=[s["k_block_per_query_head"]] * 2,
        out_shape=[per_head, per_head],
        interpret=options.interpret,
        compiler_params=options.compiler_params(),
        name="packed_flash_dkv",
    )(q, k, v, d_out, lse, delta, segment_ids, branch_ids, positions, segment_ids, branch_ids, positions, ends)
    # Each query head's share of its kv head's gradient, summed over the group.
    dk = dk.reshape(batch, seq, kv_heads, group, dim).sum(axis=3, dtype=jnp.float32).astype(k.dtype)
    dv = dv.reshape(batch, seq, kv_heads, group, dim).sum(axis=3, dtype=jnp.float32).astype(v.dtype)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _padded_to(x: jax.Array, length: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return jnp.pad(x, pad)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    branch_ids: jax.Array,
    positions: jax.Array,
    bounds: tuple[jax.Array, jax.Array] | None = None,
    *,
    options: FlashOptions,
) -> jax.Array:
    """q ``[b, s, heads, d]``, k/v ``[b, s, kv_heads, d]``, ids ``[b, s]`` int -> ``[b, s, heads, d]``.

    ``bounds``: ``segment_bounds(segment_ids)`` when the caller computed it
    once for all layers. Rows are padded to a multiple of the blocks with
    padding tokens (segment 0), which see only themselves and are cut off again.
    """
    seq = q.shape[1]
    step = max(options.block_q, options.block_k)
    if step % options.block_q or step % options.block_k:
        raise ValueError(f"flash attention blocks must divide each other, got {options.block_q} and {options.block_k}")
    padded = -(-seq // step) * step
    if bounds is None:
        bounds = segment_bounds(segment_ids)
    ids = [segment_ids, branch_ids, positions, *bounds]
    if padded != seq:
        q, k, v = (_padded_to(x, padded) for x in (q, k, v))
        ids = [_padded_to(x.astype(jnp.int32), padded) for x in ids]
        # Padding's bounds: its own index (starts) and index + 1 (ends).
        tail = jnp.arange(seq, padded, dtype=jnp.int32)
        ids[3] = ids[3].at[:, seq:].set(tail)
        ids[4] = ids[4].at[:, seq:].set(tail + 1)
    ids = tuple(x.astype(jnp.int32) for x in ids)
    return _flash(q, k, v, ids, options)[:, :seq]
