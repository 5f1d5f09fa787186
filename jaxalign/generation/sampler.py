"""``generate``: prefill the prompts into a KV cache, then a ``lax.while_loop`` decode.

Every row at once (the static program here), or ``cfg.slots`` rows at a time by
continuous batching (``continuous.py``); both are made of ``decode.py``'s pieces and
give the same rows. The static program is one compiled program per (model graph,
``SamplingConfig``, prompt shape, ``num_samples``, shardings). Both phases are the
model's own forward with a KV cache (``CausalLM.hidden_states(..., cache=...)``).
Prompts are left-padded ``[B, Lp]``, so every row's prompt ends in slot ``Lp - 1``
and step ``i``'s token goes to slot ``Lp + i`` for the whole batch (one
``dynamic_update_slice`` per layer), while RoPE positions continue from each row's
own prompt length. The loop stops as soon as every row has emitted a stop token,
or after ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.continuous import sample_continuously
from jaxalign.generation.decode import CacheShardings, constrain_rows, decode, prefill, prefix_cache, start_rows
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KEY_AXES, VALUE_AXES, cache_shapes
from jaxalign.models.transformer import CausalLM
from jaxalign.sharding import batch_divisor, logical_sharding


class Generation(NamedTuple):
    """What ``generate`` returns (B rows = prompts x ``num_samples``, N = ``max_new_tokens``).

    tokens ``[B, N]`` int32: sampled tokens; ``pad_token_id`` after a row stops.
    mask ``[B, N]`` int32: 1 for completion tokens, up to and including the stop token.
    logps ``[B, N]`` float32: log-prob of each token under the policy itself
        (log_softmax of the raw logits, temperature 1, no top-k/top-p); 0 where mask is 0.
    sampling_logps ``[B, N]`` float32: log-prob under the distribution actually
        sampled from (temperature, top-k, top-p applied); 0 for greedy and where mask is 0.
    lengths ``[B]`` int32: completion tokens per row (= mask.sum(-1)).
    steps ``[]`` int32: the most tokens any row sampled (= lengths.max()); < N when
        every row stopped early.
    """

    tokens: jax.Array
    mask: jax.Array
    logps: jax.Array
    sampling_logps: jax.Array
    lengths: jax.Array
    steps: jax.Array


def _generation(tokens: jax.Array, logps: jax.Array, sampling_logps: jax.Array, lengths: jax.Array) -> Generation:
    """The result of finished rows ``[B, N]`` (in result order)."""
    mask = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
    return Generation(tokens, mask, logps, sampling_logps, lengths, jnp.max(lengths))


_generation_jit = jax.jit(_generation)


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
    """Every row at once: one prefill per prompt, copied to its ``num_samples`` rows, then decode."""
    model = nnx.merge(graphdef, state)
    prompts, prompt_len = prompt_ids.shape
    prefill_shardings, decode_shardings = cache_shardings or (None, None)
    # A prefix shared by every prompt is prefilled once, on one row, and its cache copied to
    # every prompt's row; the prompts then continue it (positions from prefix_len on).
    prefix = None if prefix_ids is None else prefix_cache(model, prefix_ids, prompt_len)
    prefix_len = 0 if prefix_ids is None else prefix_ids.shape[0]
    first_logits, cache, lengths = prefill(model, prompt_ids, prompt_mask, prefix, prefill_shardings)
    rows = start_rows(first_logits, cache, lengths, jnp.arange(prompts * num_samples, dtype=jnp.int32),
                      num_samples=num_samples, total_slots=prefix_len + prompt_len + cfg.max_new_tokens - 1,
                      prefix_len=prefix_len, rng=rng, cfg=cfg, stop_ids=stop_ids)
    rows = constrain_rows(rows, decode_shardings)
    # The last sampled token is never fed back: at most max_new_tokens - 1 decode steps.
    rows = decode(model, rows, rng, cfg, stop_ids, decode_shardings, cfg.max_new_tokens, prompts * num_samples + 1)
    return _generation(rows.tokens, rows.logps, rows.sampling_logps, rows.lengths)


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


def decode_shardings(mesh: Mesh, model_cfg: ModelConfig, batch: int, slots: int,
                     rules: dict | None = None) -> CacheShardings:
    """Where the sampler puts a cache of ``batch`` rows and ``slots`` slots on ``mesh``: its
    keys, its values (kv heads over ``tensor`` when divisible) and its rows (the leading axis
    of every per-row array), rows split over the batch axes."""
    key_shape, value_shape = cache_shapes(model_cfg, batch, slots)
    return (logical_sharding(mesh, KEY_AXES, key_shape, rules), logical_sharding(mesh, VALUE_AXES, value_shape, rules),
            logical_sharding(mesh, ("batch",), (batch,), rules))


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
    rows, which then decode independently: row ``r`` samples its token ``t`` with
    ``fold_in(fold_in(rng, r), t)``, so its tokens do not depend on the other rows.

    With ``cfg.slots`` (>= 1) smaller than the rows, ``cfg.slots`` rows decode at once and a
    row that stops hands its slot to the next (continuous batching; same results).

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
    prompts, prompt_len = np.shape(prompt_ids)
    stop_ids = stop_token_ids(cfg, model_cfg.eos_token_id)
    if mesh is not None and cfg.slots and cfg.slots % batch_divisor(mesh):
        raise ValueError(f"slots {cfg.slots} must be a multiple of the mesh's batch axes (data x fsdp = "
                         f"{batch_divisor(mesh)}): each device decodes the same number of rows")
    cache_shardings = put_prompts = None
    if mesh is not None:
        def put_prompts(ids, mask):
            rows = logical_sharding(mesh, ("batch", None), np.shape(ids), rules)
            return jax.device_put((ids, mask), rows)

        def cache_shardings(batch: int, slots: int) -> CacheShardings:
            return decode_shardings(mesh, model_cfg, batch, slots, rules)

    if cfg.slots and cfg.slots < prompts * num_samples:
        if jax.process_count() > 1:
            raise ValueError(f"slots {cfg.slots} (continuous batching) runs in one process for now; "
                             "set slots to 0 (every row at once) on several hosts")
        results = sample_continuously(
            graphdef, state, np.asarray(prompt_ids), np.asarray(prompt_mask), rng, cfg, stop_ids=stop_ids,
            num_samples=num_samples, prefix_ids=prefix_ids, put_prompts=put_prompts or (lambda ids, mask: (ids, mask)),
            cache_shardings=cache_shardings,
        )
        if mesh is not None:  # rows split over the batch axes, as the static program returns them
            results = jax.device_put(results, logical_sharding(mesh, ("batch",), (prompts * num_samples,), rules))
        return _generation_jit(results.tokens, results.logps, results.sampling_logps, results.lengths)
    static_shardings = None
    if mesh is not None:
        prompt_ids, prompt_mask = put_prompts(prompt_ids, prompt_mask)
        static_shardings = (cache_shardings(prompts, prefix_len + prompt_len),
                            cache_shardings(prompts * num_samples, total - 1))
    return _sample_jit(
        graphdef, state, prompt_ids, prompt_mask, rng, cfg=cfg, stop_ids=stop_ids,
        num_samples=num_samples, cache_shardings=static_shardings, prefix_ids=prefix_ids,
    )
