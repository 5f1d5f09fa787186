"""The jitted sampler: prefill the prompts into a KV cache, then a ``lax.while_loop`` decode.

One compiled program per (model graph, ``SamplingConfig``, prompt shape,
``num_samples``, shardings). Both phases are the model's own forward with a KV
cache (``CausalLM.hidden_states(..., cache=...)``). Prompts are left-padded
``[B, Lp]``, so every row's prompt ends in slot ``Lp - 1`` and step ``i``'s
token goes to slot ``Lp + i`` for the whole batch (one ``dynamic_update_slice``
per layer), while RoPE positions continue from each row's own prompt length. The loop stops as soon as every row has
emitted a stop token, or after ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.sampling import policy_logps, sample_tokens
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KEY_AXES, VALUE_AXES, KVCache, cache_shapes, init_kv_cache
from jaxalign.models.transformer import CausalLM
from jaxalign.sharding import logical_sharding


class Generation(NamedTuple):
    """What ``generate`` returns (B rows = prompts x ``num_samples``, N = ``max_new_tokens``).

    tokens ``[B, N]`` int32: sampled tokens; ``pad_token_id`` after a row stops.
    mask ``[B, N]`` int32: 1 for completion tokens, up to and including the stop token.
    logps ``[B, N]`` float32: log-prob of each token under the policy itself
        (log_softmax of the raw logits, temperature 1, no top-k/top-p); 0 where mask is 0.
    sampling_logps ``[B, N]`` float32: log-prob under the distribution actually
        sampled from (temperature, top-k, top-p applied); 0 for greedy and where mask is 0.
    lengths ``[B]`` int32: completion tokens per row (= mask.sum(-1)).
    steps ``[]`` int32: tokens the loop sampled per row (prefill's included) before
        it stopped; < N when every row stopped early.
    """

    tokens: jax.Array
    mask: jax.Array
    logps: jax.Array
    sampling_logps: jax.Array
    lengths: jax.Array
    steps: jax.Array


class _Loop(NamedTuple):
    """The while-loop carry. ``step`` = tokens sampled so far."""

    step: jax.Array
    last_tokens: jax.Array  # [B]
    tokens: jax.Array  # [B, N]
    logps: jax.Array  # [B, N]
    sampling_logps: jax.Array  # [B, N]
    lengths: jax.Array  # [B]
    done: jax.Array  # [B] bool
    cache: KVCache


def _record(loop: _Loop, logits: jax.Array, rng: jax.Array, cfg: SamplingConfig, stop_ids: tuple[int, ...]) -> _Loop:
    """Samples token ``loop.step`` for every row from ``logits`` ``[B, vocab]`` and writes it down."""
    token, sampling_logp = sample_tokens(logits, jax.random.fold_in(rng, loop.step), cfg)
    logp = policy_logps(logits, token)
    live = ~loop.done
    token = jnp.where(live, token, cfg.pad_token_id)
    is_stop = jnp.zeros_like(live)
    for stop in stop_ids:
        is_stop = is_stop | (token == stop)

    def put(buffer: jax.Array, column: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice_in_dim(buffer, column[:, None], loop.step, axis=1)

    return loop._replace(
        step=loop.step + 1,
        last_tokens=token,
        tokens=put(loop.tokens, token),
        logps=put(loop.logps, jnp.where(live, logp, 0.0)),
        sampling_logps=put(loop.sampling_logps, jnp.where(live, sampling_logp, 0.0)),
        lengths=loop.lengths + live.astype(jnp.int32),
        done=loop.done | (live & is_stop),
    )


CacheShardings = tuple[NamedSharding, NamedSharding]  # (keys, values) of every layer


def _constrain(cache: KVCache, shardings: CacheShardings | None) -> KVCache:
    if shardings is None:
        return cache
    keys, values = shardings
    return cache.replace(keys=tuple(jax.lax.with_sharding_constraint(x, keys) for x in cache.keys),
                         values=tuple(jax.lax.with_sharding_constraint(x, values) for x in cache.values))


def _sample(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    cfg: SamplingConfig,
    stop_ids: tuple[int, ...],
    num_samples: int,
    cache_shardings: tuple[CacheShardings, CacheShardings] | None,
    prefix_ids: jax.Array | None = None,
) -> Generation:
    model = nnx.merge(graphdef, state)
    prompts, prompt_len = prompt_ids.shape
    batch = prompts * num_samples
    new = cfg.max_new_tokens
    prefill_shardings, decode_shardings = cache_shardings or (None, None)
    prompt_valid = prompt_mask.astype(bool)
    prompt_positions = jnp.maximum(jnp.cumsum(prompt_valid.astype(jnp.int32), axis=-1) - 1, 0)
    prefix_len = 0 if prefix_ids is None else prefix_ids.shape[0]

    # A prefix shared by every prompt is prefilled once, on one row, and its cache copied to
    # every prompt's row; the prompts then continue it (positions from prefix_len on). A
    # padding row keeps the prefix slots but is still marked done below by its own length.
    cache = init_kv_cache(model.config, 1 if prefix_len else prompts, prefix_len + prompt_len)
    if prefix_len:
        prefix_positions = jnp.arange(prefix_len, dtype=jnp.int32)[None]
        _, cache = model.hidden_states(prefix_ids[None], prefix_positions, jnp.ones_like(prefix_positions), cache=cache)
        cache = cache.repeat(prompts)
    # Prefill once per prompt, on a cache of exactly the prompt's slots; then room for the
    # decoded tokens (the last sampled token is never fed back), each prompt's cache copied
    # to its num_samples rows.
    cache = _constrain(cache, prefill_shardings)
    hidden, cache = model.hidden_states(prompt_ids, prompt_positions + prefix_len, prompt_mask, cache=cache)
    first_logits = model.logits_from_hidden(hidden[:, -1])  # left padding: every prompt ends in the last column
    cache = _constrain(cache.grow(prefix_len + prompt_len + new - 1).repeat(num_samples), decode_shardings)
    prompt_lengths = jnp.repeat(prompt_valid.sum(axis=-1, dtype=jnp.int32), num_samples)

    loop = _Loop(
        step=jnp.zeros((), jnp.int32),
        last_tokens=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, new), cfg.pad_token_id, jnp.int32),
        logps=jnp.zeros((batch, new), jnp.float32),
        sampling_logps=jnp.zeros((batch, new), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32),
        done=prompt_lengths == 0,  # padding rows (no prompt) generate nothing and never hold the loop up
        cache=cache,
    )
    prompt_lengths = prompt_lengths + prefix_len
    loop = _record(loop, jnp.repeat(first_logits, num_samples, axis=0), rng, cfg, stop_ids)
    real_token = jnp.ones((batch, 1), jnp.int32)

    def keep_going(loop: _Loop) -> jax.Array:
        return (loop.step < new) & ~jnp.all(loop.done)

    def decode_step(loop: _Loop) -> _Loop:
        # The previous token goes to slot prompt_len + step - 1 (= cache.index); its position continues the prompt.
        positions = (prompt_lengths + loop.step - 1)[:, None]
        hidden, cache = model.hidden_states(loop.last_tokens[:, None], positions, real_token, cache=loop.cache)
        loop = loop._replace(cache=_constrain(cache, decode_shardings))
        return _record(loop, model.logits_from_hidden(hidden[:, 0]), rng, cfg, stop_ids)

    loop = jax.lax.while_loop(keep_going, decode_step, loop)
    mask = (jnp.arange(new)[None] < loop.lengths[:, None]).astype(jnp.int32)
    return Generation(loop.tokens, mask, loop.logps, loop.sampling_logps, loop.lengths, loop.step)


_sample_jit = jax.jit(_sample, static_argnames=("graphdef", "cfg", "stop_ids", "num_samples", "cache_shardings"))


def _split(model: CausalLM | tuple[nnx.GraphDef, nnx.State]) -> tuple[nnx.GraphDef, nnx.State, ModelConfig]:
    """(graphdef, state, config) of a ``CausalLM`` or of its split pair."""
    if isinstance(model, tuple):
        graphdef, state = model
        model = nnx.merge(graphdef, state)  # only to read the static config; no copies
    else:
        graphdef, state = nnx.split(model)
    if not isinstance(model, CausalLM):
        raise TypeError(f"generate needs a CausalLM (or its (graphdef, state)), got {type(model).__name__}")
    return graphdef, state, model.config


def _int32(x: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """int32 without moving the data (jax arrays keep their sharding)."""
    return x.astype(jnp.int32) if isinstance(x, jax.Array) else np.asarray(x, np.int32)


def stop_token_ids(cfg: SamplingConfig, eos_token_id: Any) -> tuple[int, ...]:
    """``cfg.stop_token_ids`` plus, with ``cfg.stop_at_eos``, the model's EOS id(s); sorted, unique."""
    ids = set(cfg.stop_token_ids)
    if cfg.stop_at_eos and eos_token_id is not None:
        ids.update(int(t) for t in np.atleast_1d(eos_token_id))
    return tuple(sorted(ids))


def generate(
    model: CausalLM | tuple[nnx.GraphDef, nnx.State],
    prompt_ids: jax.Array | np.ndarray,
    prompt_mask: jax.Array | np.ndarray,
    rng: jax.Array,
    cfg: SamplingConfig,
    *,
    mesh: Mesh | None = None,
    rules: dict | None = None,
    num_samples: int = 1,
    prefix_ids: jax.Array | np.ndarray | None = None,
) -> Generation:
    """Samples ``cfg.max_new_tokens`` tokens after each left-padded prompt
    (``num_samples`` continuations of each: rows ``p * num_samples .. p * num_samples + n - 1``
    of the result continue prompt ``p``).

    model: a ``CausalLM``, or its ``nnx.split`` pair (graphdef, state): the
    sampler is a pure function of the state, so a train state's parameters
    can be passed as they are. prompt_ids, prompt_mask ``[B, Lp]`` int: prompts
    aligned to the right edge (``jaxalign.data.pack_prompts``); a row whose mask
    is all 0 is padding and gets no tokens (length 0). rng: a ``jax.random`` key.

    With ``mesh`` the rows are split over the batch axes (``data``, ``fsdp``;
    ``rules`` as in ``jaxalign.sharding``) and the cache follows them (kv heads
    over ``tensor`` when divisible); parameters stay where they were loaded.
    Pass already-global arrays when running on several hosts.

    Each prompt is prefilled once; its cache is copied to its ``num_samples``
    rows, which then decode independently (one uniform number per row and step).

    ``prefix_ids`` ``[Lx]`` int (no padding): tokens that come before every prompt (a
    shared instruction or few-shot block). They are prefilled once for the whole batch
    and each prompt continues them, as if every row's prompt were ``prefix + prompt``
    (the prompt's padding sits between the two and is masked out).
    """
    graphdef, state, model_cfg = _split(model)
    prompt_ids, prompt_mask = _int32(prompt_ids), _int32(prompt_mask)
    if np.ndim(prompt_ids) != 2 or np.shape(prompt_ids) != np.shape(prompt_mask) or 0 in np.shape(prompt_ids):
        raise ValueError(
            f"prompt_ids and prompt_mask must both be [batch, length] with batch, length >= 1, "
            f"got {np.shape(prompt_ids)} and {np.shape(prompt_mask)}"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    prefix_len = 0
    if prefix_ids is not None:
        prefix_ids = _int32(prefix_ids)
        if np.ndim(prefix_ids) != 1:
            raise ValueError(f"prefix_ids must be [length], got shape {np.shape(prefix_ids)}")
        prefix_len = int(np.shape(prefix_ids)[0])
        prefix_ids = prefix_ids if prefix_len else None
    total = prefix_len + np.shape(prompt_ids)[1] + cfg.max_new_tokens
    if model_cfg.family == "gpt2" and total > model_cfg.max_position_embeddings:
        shared = f"prefix {prefix_len} + " if prefix_len else ""
        raise ValueError(
            f"{shared}prompt length {np.shape(prompt_ids)[1]} + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
            f"{model_cfg.max_position_embeddings} learned positions"
        )
    cache_shardings = None
    if mesh is not None:
        prompts, prompt_len = np.shape(prompt_ids)
        rows = logical_sharding(mesh, ("batch", None), (prompts, prompt_len), rules)
        prompt_ids, prompt_mask = jax.device_put((prompt_ids, prompt_mask), rows)

        def shardings(batch: int, slots: int) -> CacheShardings:
            key_shape, value_shape = cache_shapes(model_cfg, batch, slots)
            return (logical_sharding(mesh, KEY_AXES, key_shape, rules), logical_sharding(mesh, VALUE_AXES, value_shape, rules))

        cache_shardings = (shardings(prompts, prefix_len + prompt_len), shardings(prompts * num_samples, total - 1))
    return _sample_jit(
        graphdef, state, prompt_ids, prompt_mask, rng, cfg=cfg, stop_ids=stop_token_ids(cfg, model_cfg.eos_token_id),
        num_samples=num_samples, cache_shardings=cache_shardings, prefix_ids=prefix_ids,
    )

