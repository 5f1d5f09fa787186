"""A key/value cache for incremental decoding with ``CausalLM``.

Sampling runs the decoder over a few new tokens at a time (the whole prompt
once, then one token per step); each layer's keys and values of earlier tokens
are kept in a preallocated buffer instead of being recomputed.

*Slots* index the cache buffer and are shared by the whole batch, so a step
writes every row with one ``lax.dynamic_update_slice`` per layer. *Positions*
are what RoPE / GPT-2's position table see and are per row, so left-padded
prompts of different lengths each continue from their own length.

Layouts are chosen for the decode step's two attention dots, both plain
batched matmuls over (batch, kv_heads) that read the cache in place: keys
``[batch, kv_heads, head_dim, slots]`` (q @ keys), values ``[batch, kv_heads,
slots, head_dim]`` (probs @ values). With slots before kv heads XLA copied a
transpose of the whole cache per layer and step; with keys untransposed the
scores dot was ~2x slower (CPU measurements).

``cached_hidden_states`` follows ``Decoder.__call__`` / ``Block.__call__`` /
``Attention.__call__`` step for step, reusing their submodules; the
generation tests check it against the uncached forward and against
transformers' ``generate``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.models.attention import MASK_VALUE, Attention
from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import to_dtype
from jaxalign.models.rope import apply_rope
from jaxalign.models.transformer import CausalLM

KEY_AXES = ("batch", "kv_heads", "head_dim", None)  # logical axes of one layer's key buffer
VALUE_AXES = ("batch", "kv_heads", None, "head_dim")  # ... and of its value buffer


class KVCache(NamedTuple):
    """Per layer, keys ``[batch, kv_heads, head_dim, slots]`` and values ``[batch, kv_heads, slots, head_dim]``,
    in the model's compute dtype."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


def init_kv_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    """An all-zero cache with ``slots`` slots per row."""
    key_shape, value_shape = cache_shapes(cfg, batch, slots)
    dtype = to_dtype(cfg.dtype)
    return KVCache(
        keys=tuple(jnp.zeros(key_shape, dtype) for _ in range(cfg.num_layers)),
        values=tuple(jnp.zeros(value_shape, dtype) for _ in range(cfg.num_layers)),
    )


def cache_shapes(cfg: ModelConfig, batch: int, slots: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one layer's key and value buffers."""
    return (batch, cfg.num_kv_heads, cfg.head_dim, slots), (batch, cfg.num_kv_heads, slots, cfg.head_dim)


def cached_attention_mask(
    key_valid: jax.Array,
    key_positions: jax.Array,
    query_slots: jax.Array,
    query_positions: jax.Array,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean ``[batch, queries, keys]``: a query sees valid keys in earlier (or its own) slots.

    key_valid, key_positions ``[batch, keys]`` (keys = the leading cache slots
    attended); query_slots ``[queries]``; query_positions ``[batch, queries]``.
    The window is measured in positions, as in ``packed_mask``.
    """
    num_keys = key_valid.shape[1]
    causal = jnp.arange(num_keys)[None, :] <= query_slots[:, None]  # [queries, keys]
    mask = key_valid[:, None, :] & causal[None]
    if sliding_window is not None:
        distance = query_positions[:, :, None] - key_positions[:, None, :]
        mask = mask & (distance < sliding_window)
    return mask


def cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """q ``[b, s, heads, d]``, keys ``[b, kv_heads, d, t]``, values ``[b, kv_heads, t, d]``, mask ``[b, s, t]``
    -> ``[b, s, heads, d]``.

    ``dot_product_attention`` over the cache layout: scores and softmax in
    float32, the weighted sum in the values' dtype. The query heads of a kv
    head and the query tokens are folded into one matrix dimension, so both
    dots are plain batched matmuls over (batch, kv_heads) (XLA's CPU backend
    ran the unfolded weighted sum 3-4x slower).
    """
    batch, seq, heads, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    folded = q.reshape(batch, seq, kv_heads, group, dim).transpose(0, 2, 3, 1, 4).reshape(batch, kv_heads, group * seq, dim)
    scores = jnp.einsum("bkmd,bkdt->bkmt", folded, keys, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(batch, kv_heads, group, seq, -1)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype).reshape(batch, kv_heads, group * seq, -1)
    out = jnp.einsum("bkmt,bktd->bkmd", probs, values).reshape(batch, kv_heads, group, seq, dim)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq, heads, dim)


def _project_qkv(attn: Attention, x: jax.Array, cos: jax.Array | None, sin: jax.Array | None):
    """q ``[b, s, heads, d]``, k/v ``[b, s, kv_heads, d]`` exactly as ``Attention.__call__`` computes them."""
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.use_rope:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def cached_hidden_states(
    model: CausalLM,
    input_ids: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    start: jax.Array | int,
    key_valid: jax.Array,
    key_positions: jax.Array,
) -> tuple[jax.Array, KVCache]:
    """Runs the decoder over new tokens that attend to the cache; writes their keys/values into it.

    input_ids, positions ``[batch, s]``: the new tokens, written to slots
    ``start .. start + s - 1`` (``start`` a scalar, possibly traced).
    key_valid ``[batch, k]`` bool, key_positions ``[batch, k]`` int: which of
    the first ``k`` slots hold real tokens after this write, and their
    positions; attention reads only those ``k`` slots (``k`` = s for a prompt
    prefill from slot 0, the whole cache when decoding).
    Returns hidden states ``[batch, s, hidden]`` after the final norm and the
    updated cache.
    """
    decoder = model.model
    cfg = decoder.config
    num_keys = key_valid.shape[1]
    x, cos, sin = decoder.embed(input_ids, positions)
    query_slots = start + jnp.arange(input_ids.shape[1])
    full_mask = cached_attention_mask(key_valid, key_positions, query_slots, positions)
    sliding_mask = None
    if any(block.sliding for block in decoder.layers):
        sliding_mask = cached_attention_mask(key_valid, key_positions, query_slots, positions, cfg.sliding_window)

    keys, values = list(cache.keys), list(cache.values)
    for i, block in enumerate(decoder.layers):
        attn = block.self_attn
        q, k, v = _project_qkv(attn, block.input_layernorm(x), cos, sin)
        keys[i] = jax.lax.dynamic_update_slice(keys[i], k.transpose(0, 2, 3, 1).astype(keys[i].dtype), (0, 0, 0, start))
        values[i] = jax.lax.dynamic_update_slice(values[i], v.transpose(0, 2, 1, 3).astype(values[i].dtype), (0, 0, start, 0))
        mask = sliding_mask if block.sliding else full_mask
        attended = cached_attention(q, keys[i][..., :num_keys], values[i][:, :, :num_keys], mask, attn.scale)
        x = x + attn.o_proj(attended)
        x = x + block.mlp(block.post_attention_layernorm(x))
    return decoder.norm(x), KVCache(tuple(keys), tuple(values))
