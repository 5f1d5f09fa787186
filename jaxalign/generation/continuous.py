"""Continuous batching: ``cfg.slots`` rows decode at once; a stopped row's slot gets the next prompt.

The cache has one row per slot and a per-row write index (``KVCache.index`` ``[slots]``):
a refilled slot's prompt is written to slots ``0 .. Lx + Lp - 1`` of its cache row and its
tokens follow, exactly as in the static program, so a row computes the same numbers
whichever slot it runs in. (A ring buffer with one shared write index would avoid the
per-row scatter but put a row's tokens at other cache offsets, and so change the order of
attention's sums; the per-row index keeps rows bit-for-bit comparable.)

Three compiled programs per shape, none recompiled per refill: ``_refill`` (prefill
``refill_rows`` prompts and put them into free slots, first token sampled; finished rows
copied to the result first), ``_chunk`` (decode until at least as many slots are free as a
refill fills, or every row has stopped) and ``_finish``. The host loop between them reads
only the ``done`` flags ``[slots]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.decode import CacheShardings, Rows, constrain_rows, decode, prefill, prefix_cache, start_rows
from jaxalign.models.kv_cache import KVCache, init_kv_cache

REFILL_FRACTION = 8  # a refill prefills slots // 8 prompts: few slots idle while waiting, few prefill calls


class Results(NamedTuple):
    """Finished rows, in result order (B rows, N = ``max_new_tokens``)."""

    tokens: jax.Array  # [B, N] int32
    logps: jax.Array  # [B, N] float32
    sampling_logps: jax.Array  # [B, N] float32
    lengths: jax.Array  # [B] int32


def refill_rows(slots: int) -> int:
    """Prompts one refill prefills (a refill waits until this many slots are free)."""
    return max(1, slots // REFILL_FRACTION)


def _copy_out(rows: Rows, results: Results) -> Results:
    """Every slot's row copied to its place in the result (empty slots point past the end)."""
    put = lambda out, values: out.at[rows.row].set(values, mode="drop")  # noqa: E731
    return Results(put(results.tokens, rows.tokens), put(results.logps, rows.logps),
                   put(results.sampling_logps, rows.sampling_logps), put(results.lengths, rows.lengths))


def _empty(model_graph: nnx.GraphDef, model_state: nnx.State, *, slots: int, total_slots: int, batch: int,
           cfg: SamplingConfig, shardings: CacheShardings | None) -> tuple[Rows, Results]:
    model = nnx.merge(model_graph, model_state)
    new = cfg.max_new_tokens
    cache = init_kv_cache(model.config, slots, total_slots).per_row_index()
    rows = Rows(
        row=jnp.full((slots,), batch, jnp.int32), step=jnp.zeros((slots,), jnp.int32),
        last_tokens=jnp.zeros((slots,), jnp.int32), prompt_lengths=jnp.zeros((slots,), jnp.int32),
        tokens=jnp.full((slots, new), cfg.pad_token_id, jnp.int32), logps=jnp.zeros((slots, new), jnp.float32),
        sampling_logps=jnp.zeros((slots, new), jnp.float32), lengths=jnp.zeros((slots,), jnp.int32),
        done=jnp.ones((slots,), bool), cache=cache,
    )
    rows = constrain_rows(rows, shardings)
    results = Results(jnp.full((batch, new), cfg.pad_token_id, jnp.int32), jnp.zeros((batch, new), jnp.float32),
                      jnp.zeros((batch, new), jnp.float32), jnp.zeros((batch,), jnp.int32))
    return rows, results


def _refill(graphdef: nnx.GraphDef, state: nnx.State, rows: Rows, results: Results, prompt_ids: jax.Array,
            prompt_mask: jax.Array, row_ids: jax.Array, slot_ids: jax.Array, prefix: KVCache | None, rng: jax.Array,
            *, cfg: SamplingConfig, stop_ids: tuple[int, ...], total_slots: int,
            shardings: tuple[CacheShardings, CacheShardings] | None) -> tuple[Rows, Results]:
    """Prompts ``[R, Lp]`` become rows ``row_ids`` ``[R]`` in slots ``slot_ids`` ``[R]`` (a slot id
    past the end is a no-op entry that pads the refill to R)."""
    model = nnx.merge(graphdef, state)
    prefill_shardings, decode_shardings = shardings or (None, None)
    results = _copy_out(rows, results)
    first_logits, cache, lengths = prefill(model, prompt_ids, prompt_mask, prefix, prefill_shardings)
    prefix_len = 0 if prefix is None else prefix.slots - prompt_ids.shape[1]
    new = start_rows(first_logits, cache, lengths, row_ids, num_samples=1, total_slots=total_slots,
                     prefix_len=prefix_len, rng=rng, cfg=cfg, stop_ids=stop_ids)
    new = new._replace(cache=new.cache.per_row_index())
    rows = jax.tree.map(lambda old, fresh: old.at[slot_ids].set(fresh, mode="drop"), rows, new)
    return constrain_rows(rows, decode_shardings), results


def _chunk(graphdef: nnx.GraphDef, state: nnx.State, rows: Rows, rng: jax.Array, until_done: jax.Array, *,
           cfg: SamplingConfig, stop_ids: tuple[int, ...], shardings: CacheShardings | None) -> Rows:
    return decode(nnx.merge(graphdef, state), rows, rng, cfg, stop_ids, shardings, cfg.max_new_tokens, until_done)


_empty_jit = jax.jit(_empty, static_argnames=("model_graph", "slots", "total_slots", "batch", "cfg", "shardings"))
_refill_jit = jax.jit(_refill, static_argnames=("graphdef", "cfg", "stop_ids", "total_slots", "shardings"),
                      donate_argnames=("rows", "results"))
_chunk_jit = jax.jit(_chunk, static_argnames=("graphdef", "cfg", "stop_ids", "shardings"), donate_argnames=("rows",))
_finish_jit = jax.jit(_copy_out, donate_argnames=("results",))
_prefix_jit = jax.jit(
    lambda graphdef, state, ids, prompt_len: prefix_cache(nnx.merge(graphdef, state), ids, prompt_len),
    static_argnames=("graphdef", "prompt_len"))


def sample_continuously(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    rng: jax.Array,
    cfg: SamplingConfig,
    *,
    stop_ids: tuple[int, ...],
    num_samples: int,
    prefix_ids: jax.Array | None,
    put_prompts,
    cache_shardings,
) -> Results:
    """Rows ``p * num_samples + s`` of prompts ``[P, Lp]`` through ``cfg.slots`` live slots.

    put_prompts: puts a refill's ``[R, Lp]`` prompt arrays where the model is (a mesh's batch
    sharding). cache_shardings(rows, slots) -> the (keys, values, rows) shardings of a cache of
    ``rows`` rows and ``slots`` slots (``sampler.decode_shardings``), or None without a mesh.
    """
    prompts, prompt_len = prompt_ids.shape
    batch, slots = prompts * num_samples, cfg.slots
    group = refill_rows(slots)
    prefix_len = 0 if prefix_ids is None else prefix_ids.shape[0]
    total_slots = prefix_len + prompt_len + cfg.max_new_tokens - 1
    shard = (lambda n, slots_: None) if cache_shardings is None else cache_shardings
    shardings = (shard(group, prefix_len + prompt_len), shard(slots, total_slots))
    prefix = None if prefix_ids is None else _prefix_jit(graphdef, state, prefix_ids, prompt_len)
    rows, results = _empty_jit(graphdef, state, slots=slots, total_slots=total_slots, batch=batch, cfg=cfg,
                               shardings=shardings[1])
    # A program with no array inputs returns uncommitted arrays; the refill's outputs are
    # committed, so commit these too or the second refill compiles again.
    rows, results = jax.tree.map(lambda x: jax.device_put(x, x.sharding), (rows, results))
    has_prompt = prompt_mask.any(axis=1)
    queue = [r for r in range(batch) if has_prompt[r // num_samples]]  # padding rows never take a slot
    queue.reverse()  # pop() hands out rows in order
    while True:
        free = np.flatnonzero(np.asarray(rows.done))
        take = min(len(free), len(queue))
        for start in range(0, take, group):
            count = min(group, take - start)
            row_ids = np.full(group, batch, np.int32)
            slot_ids = np.full(group, slots, np.int32)
            ids = np.zeros((group, prompt_len), np.int32)
            mask = np.zeros((group, prompt_len), np.int32)
            for i in range(count):
                row_ids[i], slot_ids[i] = queue.pop(), free[start + i]
                ids[i], mask[i] = prompt_ids[row_ids[i] // num_samples], prompt_mask[row_ids[i] // num_samples]
            ids, mask = put_prompts(ids, mask)
            rows, results = _refill_jit(graphdef, state, rows, results, ids, mask, row_ids, slot_ids, prefix, rng,
                                        cfg=cfg, stop_ids=stop_ids, total_slots=total_slots, shardings=shardings)
        if not queue and not take and free.size == slots:
            break
        until_done = min(group, len(queue)) if queue else slots + 1
        rows = _chunk_jit(graphdef, state, rows, rng, np.int32(until_done), cfg=cfg, stop_ids=stop_ids,
                          shardings=shardings[1])
    return _finish_jit(rows, results)
