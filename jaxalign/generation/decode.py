"""The pieces both sampler programs are made of: prefill rows, sample one token per row, decode.

``Rows`` is the state of the rows being decoded (one per cache row). The static program
(``sampler.py``) prefills every row at once and decodes until all have stopped; the
continuous one (``continuous.py``) keeps a fixed number of rows ("slots") live and
prefills the next prompt into a slot whose row has stopped. Both sample a row's token
``t`` with the key ``fold_in(fold_in(rng, row), t)``, where ``row`` is the row's index in
the result, so a row's tokens depend only on its prompt, ``rng`` and its index: not on
the slot it ran in nor on the rows decoded beside it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.sampling import policy_logps, sample_tokens
from jaxalign.models.kv_cache import KVCache, init_kv_cache
from jaxalign.models.transformer import CausalLM

# (keys, values) of every layer's cache buffer, and rows (the leading axis of every per-row array)
CacheShardings = tuple[NamedSharding, NamedSharding, NamedSharding]


class Rows(NamedTuple):
    """Decoding state, one entry per cache row (B rows, N = ``max_new_tokens``)."""

    row: jax.Array  # [B] int32: the row's index in the result (its sampling key); B.. = no row
    step: jax.Array  # [B] int32: tokens sampled so far
    last_tokens: jax.Array  # [B] int32: the token to feed next
    prompt_lengths: jax.Array  # [B] int32: real prompt tokens, a shared prefix included
    tokens: jax.Array  # [B, N] int32
    logps: jax.Array  # [B, N] float32
    sampling_logps: jax.Array  # [B, N] float32
    lengths: jax.Array  # [B] int32
    done: jax.Array  # [B] bool: stopped (or never started)
    cache: KVCache


def constrain(cache: KVCache, shardings: CacheShardings | None) -> KVCache:
    if shardings is None:
        return cache
    keys, values, _ = shardings
    return cache.replace(keys=tuple(jax.lax.with_sharding_constraint(x, keys) for x in cache.keys),
                         values=tuple(jax.lax.with_sharding_constraint(x, values) for x in cache.values))


def constrain_rows(rows: Rows, shardings: CacheShardings | None) -> Rows:
    """Rows split over the mesh's batch axes (the scatters that write them do not say so by themselves)."""
    if shardings is None:
        return rows
    split = lambda x: jax.lax.with_sharding_constraint(x, shardings[2])  # noqa: E731
    return Rows(*(split(x) for x in rows[:-1]), cache=constrain(rows.cache, shardings))


def record(rows: Rows, logits: jax.Array, rng: jax.Array, cfg: SamplingConfig, stop_ids: tuple[int, ...]) -> Rows:
    """Samples each live row's next token from ``logits`` ``[B, vocab]`` and writes it down."""
    keys = jax.vmap(lambda row, step: jax.random.fold_in(jax.random.fold_in(rng, row), step))(rows.row, rows.step)
    token, sampling_logp = sample_tokens(logits, keys, cfg)
    logp = policy_logps(logits, token)
    live = ~rows.done
    token = jnp.where(live, token, cfg.pad_token_id)
    is_stop = jnp.zeros_like(live)
    for stop in stop_ids:
        is_stop = is_stop | (token == stop)
    every_row = jnp.arange(live.shape[0])
    column = jnp.where(live, rows.step, cfg.max_new_tokens)  # a stopped row writes nothing

    def put(buffer: jax.Array, values: jax.Array) -> jax.Array:
        return buffer.at[every_row, column].set(values, mode="drop")

    step = rows.step + live.astype(jnp.int32)
    return rows._replace(
        step=step,
        last_tokens=token,
        tokens=put(rows.tokens, token),
        logps=put(rows.logps, logp),
        sampling_logps=put(rows.sampling_logps, sampling_logp),
        lengths=rows.lengths + live.astype(jnp.int32),
        done=rows.done | (live & (is_stop | (step >= cfg.max_new_tokens))),
    )


def prefix_cache(model: CausalLM, prefix_ids: jax.Array, prompt_len: int) -> KVCache:
    """One row's cache holding ``prefix_ids`` ``[Lx]``, with room for a ``prompt_len`` prompt after it."""
    prefix_len = prefix_ids.shape[0]
    cache = init_kv_cache(model.config, 1, prefix_len + prompt_len)
    positions = jnp.arange(prefix_len, dtype=jnp.int32)[None]
    _, cache = model.hidden_states(prefix_ids[None], positions, jnp.ones_like(positions), cache=cache)
    return cache


def prefill(
    model: CausalLM,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    prefix: KVCache | None,
    shardings: CacheShardings | None,
) -> tuple[jax.Array, KVCache, jax.Array]:
    """Runs left-padded prompts ``[P, Lp]`` (after ``prefix``'s tokens, if any) through the model.

    Returns the logits of each prompt's next token ``[P, vocab]``, the cache of exactly the
    prefix's and prompt's slots, and the real prompt lengths ``[P]`` (prefix not counted).
    Prefill runs on a cache of exactly those slots: attention reads every slot it is given.
    """
    prompts, _ = prompt_ids.shape
    valid = prompt_mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)
    if prefix is None:
        cache, prefix_len = init_kv_cache(model.config, prompts, prompt_ids.shape[1]), 0
    else:  # a padding row keeps the prefix slots but is still marked done by its own length
        cache, prefix_len = prefix.repeat(prompts), prefix.slots - prompt_ids.shape[1]
    cache = constrain(cache, shardings)
    hidden, cache = model.hidden_states(prompt_ids, positions + prefix_len, prompt_mask, cache=cache)
    first_logits = model.logits_from_hidden(hidden[:, -1])  # left padding: every prompt ends in the last column
    return first_logits, cache, valid.sum(axis=-1, dtype=jnp.int32)


def start_rows(
    first_logits: jax.Array,
    cache: KVCache,
    prompt_lengths: jax.Array,
    row_ids: jax.Array,
    *,
    num_samples: int,
    total_slots: int,
    prefix_len: int,
    rng: jax.Array,
    cfg: SamplingConfig,
    stop_ids: tuple[int, ...],
) -> Rows:
    """Rows ``row_ids`` ``[P * num_samples]`` continuing prefilled prompts (``prefill``'s outputs):
    each prompt's cache copied to its ``num_samples`` rows and grown to ``total_slots``, and every
    row's first token sampled. A row with an empty prompt is padding: done, no tokens."""
    batch, new = row_ids.shape[0], cfg.max_new_tokens
    prompt_lengths = jnp.repeat(prompt_lengths, num_samples)
    rows = Rows(
        row=row_ids,
        step=jnp.zeros((batch,), jnp.int32),
        last_tokens=jnp.zeros((batch,), jnp.int32),
        prompt_lengths=prompt_lengths + prefix_len,
        tokens=jnp.full((batch, new), cfg.pad_token_id, jnp.int32),
        logps=jnp.zeros((batch, new), jnp.float32),
        sampling_logps=jnp.zeros((batch, new), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32),
        done=prompt_lengths == 0,
        cache=cache.grow(total_slots).repeat(num_samples),
    )
    return record(rows, jnp.repeat(first_logits, num_samples, axis=0), rng, cfg, stop_ids)


def decode(
    model: CausalLM,
    rows: Rows,
    rng: jax.Array,
    cfg: SamplingConfig,
    stop_ids: tuple[int, ...],
    shardings: CacheShardings | None,
    max_steps: jax.Array | int,
    until_done: jax.Array | int,
) -> Rows:
    """Decodes one token per live row per step (``lax.while_loop``) until every row has stopped,
    ``max_steps`` steps have run, or at least ``until_done`` rows are done (free for a refill)."""
    real_token = jnp.ones((rows.row.shape[0], 1), jnp.int32)

    def keep_going(carry: tuple[jax.Array, Rows]) -> jax.Array:
        count, rows = carry
        return (count < max_steps) & ~jnp.all(rows.done) & (jnp.sum(rows.done) < until_done)

    def decode_step(carry: tuple[jax.Array, Rows]) -> tuple[jax.Array, Rows]:
        count, rows = carry
        # The last sampled token goes to the row's next slot (cache.index); its position continues the prompt.
        positions = (rows.prompt_lengths + rows.step - 1)[:, None]
        hidden, cache = model.hidden_states(rows.last_tokens[:, None], positions, real_token, cache=rows.cache)
        rows = record(rows._replace(cache=cache), model.logits_from_hidden(hidden[:, 0]), rng, cfg, stop_ids)
        return count + 1, constrain_rows(rows, shardings)

    _, rows = jax.lax.while_loop(keep_going, decode_step, (jnp.zeros((), jnp.int32), rows))
    return rows
