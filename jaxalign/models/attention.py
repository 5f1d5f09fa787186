"""Masked multi-head attention with grouped-query heads (GQA) and RoPE.

The mask is exactly ``jaxalign.batch.attention_mask`` (segments, branches,
causal order), optionally narrowed to a sliding window measured in positions,
so a packed row gives each example the outputs it would get alone. Which
kernel computes it is the layout's backend (``attend``;
``jaxalign.models.attention_backends``). With a KV cache
(``jaxalign.models.kv_cache``) the new tokens' keys and values are written
into it and the queries attend to the cache's slots instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.batch import attention_mask
from jaxalign.models.kv_cache import LayerCache
from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import Linear, RMSNorm, residual_std, to_dtype
from jaxalign.models.rope import apply_rope

# Finite, so a fully masked row (never produced by our masks) would not turn into NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def packed_mask(
    segment_ids: jax.Array,
    branch_ids: jax.Array | None,
    positions: jax.Array,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean ``[batch, seq, seq]`` (query, key) mask.

    ``sliding_window`` keeps keys whose position is less than ``sliding_window``
    behind the query's. Distances are taken from ``positions``, not row
    offsets, so a rejected reply packed after the chosen one measures its
    distance to the prompt as if it followed the prompt directly (Mistral
    counts ``query - key < window`` in the same way).
    """
    if branch_ids is None:
        branch_ids = jnp.zeros_like(segment_ids)
    mask = attention_mask(segment_ids, branch_ids)
    if sliding_window is not None:
        distance = positions[:, :, None] - positions[:, None, :]
        mask = mask & (distance < sliding_window)  # the diagonal (distance 0) stays visible
    return mask


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """q ``[b, s, heads, d]``, k/v ``[b, t, kv_heads, d]``, mask ``[b, s, t]`` -> ``[b, s, heads, d]``.

    Scores and softmax in float32; the weighted sum in q's dtype.
    """
    batch, seq, heads, dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(batch, seq, kv_heads, heads // kv_heads, dim)
    scores = jnp.einsum("bskgd,btkd->bkgst", grouped, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(batch, seq, heads, dim)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, layout, scale: float) -> jax.Array:
    """The attention entry point: q ``[b, s, heads, d]``, k/v ``[b, s, kv_heads, d]`` -> ``[b, s, heads, d]``.

    ``layout`` comes from ``attention_backends.attention_layout`` and names the
    backend (dense mask, tile layout, cuDNN mask or Pallas ids).
    """
    return layout.attend(q, k, v, scale)


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


class Attention(nnx.Module):
    """Self-attention: q/k/v projections, optional q/k RMSNorm (Qwen3), RoPE (llama family), output projection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, std=cfg.initializer_range)
        self.q_proj = Linear((e,), (h, d), ("embed",), ("heads", "head_dim"), use_bias=cfg.attention_bias, **common)
        self.k_proj = Linear((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=cfg.attention_bias, **common)
        self.v_proj = Linear((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=cfg.attention_bias, **common)
        out_std = residual_std(cfg.initializer_range, cfg.num_layers) if cfg.family == "gpt2" else cfg.initializer_range
        self.o_proj = Linear(
            (h, d), (e,), ("heads", "head_dim"), ("embed",),
            use_bias=cfg.attention_out_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs, std=out_std,
        )
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.use_rope = cfg.family == "llama"
        self.scale = cfg.head_dim ** -0.5

    def __call__(
        self, x: jax.Array, cos: jax.Array | None, sin: jax.Array | None, mask, cache: LayerCache | None = None
    ) -> jax.Array | tuple[jax.Array, LayerCache]:
        """x ``[b, s, embed]``, cos/sin ``[b, s, head_dim]`` (or None) -> ``[b, s, embed]``.

        ``mask``: an attention layout (``attention_backends.attention_layout``),
        which names the backend. With ``cache`` the new
        keys/values are written into it, ``mask`` is ``[b, s, slots]`` over its
        slots, and the updated layer cache is returned too.
        """
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache = cache.write(k, v)
            return self.o_proj(cached_attention(q, cache.keys, cache.values, mask, self.scale)), cache
        return self.o_proj(attend(q, k, v, mask, self.scale))
