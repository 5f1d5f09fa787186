"""The key/value cache that the one decoder forward takes as an optional argument.

``Decoder.__call__(..., cache=cache)`` (and ``CausalLM.hidden_states`` /
``CausalLM.__call__``) runs the usual layers over a few new tokens, writes
their keys and values into the cache at ``cache.index`` and lets them attend
to every valid slot written so far; it returns the hidden states and the
updated cache. Sampling calls it twice: over the whole prompt (prefill) and
then once per decode step over one token.

*Slots* index the cache buffer. The write index is either shared by the whole
batch (``index`` ``[]``: a write is one ``lax.dynamic_update_slice`` per layer;
the static sampler) or per row (``index`` ``[batch]``, one new token per row:
a scatter; the continuous-batching sampler, whose rows start at different
times and each keep their prompt in slots ``0 ..``). *Positions* are what RoPE /
GPT-2's position table see and are per row, so left-padded prompts of
different lengths each continue from their own length. The cache records,
per slot, whether it holds a real token (``valid``) and its position, so the
attention mask (valid, causal in slots, sliding window in positions) needs
nothing else.

Layouts are chosen for the decode step's two attention dots, both plain
batched matmuls over (batch, kv_heads) that read the cache in place: keys
``[batch, kv_heads, head_dim, slots]`` (q @ keys), values ``[batch, kv_heads,
slots, head_dim]`` (probs @ values). With slots before kv heads XLA copied a
transpose of the whole cache per layer and step; with keys untransposed the
scores dot was ~2x slower (CPU measurements). Attention reads every slot of
the cache it is given, so a prefill runs on a cache of exactly the prompt's
slots and ``grow`` pads it for the decode loop (one copy, instead of every
prefill query scanning the empty decode slots).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import to_dtype

KEY_AXES = ("batch", "kv_heads", "head_dim", None)  # logical axes of one layer's key buffer
VALUE_AXES = ("batch", "kv_heads", None, "head_dim")  # ... and of its value buffer


class LayerCache(NamedTuple):
    """One layer's buffers and the slot where the new tokens go (what ``Attention`` reads and writes)."""

    keys: jax.Array  # [batch, kv_heads, head_dim, slots]
    values: jax.Array  # [batch, kv_heads, slots, head_dim]
    index: jax.Array  # [] or [batch] int32

    def write(self, k: jax.Array, v: jax.Array) -> "LayerCache":
        """Stores the new tokens' k, v ``[batch, s, kv_heads, head_dim]`` at slots ``index .. index + s - 1``
        (a per-row ``index`` takes one token per row; a row whose index is past the end writes nothing)."""
        if self.index.ndim:
            rows = jnp.arange(k.shape[0])
            keys = self.keys.at[rows, :, :, self.index].set(k[:, 0].astype(self.keys.dtype), mode="drop")
            values = self.values.at[rows, :, self.index, :].set(v[:, 0].astype(self.values.dtype), mode="drop")
            return self._replace(keys=keys, values=values)
        keys = jax.lax.dynamic_update_slice(self.keys, k.transpose(0, 2, 3, 1).astype(self.keys.dtype),
                                            (0, 0, 0, self.index))
        values = jax.lax.dynamic_update_slice(self.values, v.transpose(0, 2, 1, 3).astype(self.values.dtype),
                                              (0, 0, self.index, 0))
        return self._replace(keys=keys, values=values)


@flax.struct.dataclass
class KVCache:
    """Per layer, keys ``[batch, kv_heads, head_dim, slots]`` and values ``[batch, kv_heads, slots, head_dim]``
    in the model's compute dtype; per slot ``valid`` ``[batch, slots]`` bool and ``positions``
    ``[batch, slots]`` int32; ``index`` int32, the next slot to write: ``[]`` (the same for every
    row) or ``[batch]`` (each row its own; then every forward adds one token per row)."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    positions: jax.Array
    index: jax.Array

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.keys[i], self.values[i], self.index)

    def mark_slots(self, positions: jax.Array, segment_ids: jax.Array) -> "KVCache":
        """Marks the slots of new tokens (``[batch, s]`` positions; segment 0 = padding) before the layers run."""
        if self.index.ndim:
            if segment_ids.shape[1] != 1:
                raise ValueError(f"a cache with a per-row write index takes one token per row, "
                                 f"got {segment_ids.shape[1]}")
            rows = jnp.arange(self.valid.shape[0])
            return self.replace(valid=self.valid.at[rows, self.index].set(segment_ids[:, 0] > 0, mode="drop"),
                                positions=self.positions.at[rows, self.index].set(positions[:, 0], mode="drop"))
        start = (0, self.index)
        valid = jax.lax.dynamic_update_slice(self.valid, segment_ids > 0, start)
        positions = jax.lax.dynamic_update_slice(self.positions, positions.astype(jnp.int32), start)
        return self.replace(valid=valid, positions=positions)

    def with_layers(self, layers: list[LayerCache], new_tokens: int) -> "KVCache":
        """The cache after every layer wrote ``new_tokens`` tokens: their buffers, ``index`` advanced."""
        return self.replace(keys=tuple(layer.keys for layer in layers), values=tuple(layer.values for layer in layers),
                            index=self.index + new_tokens)

    def mask(self, query_positions: jax.Array, sliding_window: int | None = None) -> jax.Array:
        """Boolean ``[batch, s, slots]`` for the ``s`` tokens just written at ``index``: each sees the
        valid slots up to its own; the window is measured in positions, as in ``packed_mask``."""
        query_slots = self.index[..., None] + jnp.arange(query_positions.shape[1])  # [s] or [batch, s]
        causal = jnp.arange(self.slots) <= query_slots[..., None]  # [s, slots] or [batch, s, slots]
        mask = self.valid[:, None, :] & causal
        if sliding_window is not None:
            distance = query_positions[:, :, None] - self.positions[:, None, :]
            mask = mask & (distance < sliding_window)
        return mask

    def grow(self, slots: int) -> "KVCache":
        """The same cache with ``slots`` slots in all (new ones empty): room for the tokens to decode."""
        extra = slots - self.slots
        if extra < 0:
            raise ValueError(f"cannot shrink a {self.slots}-slot cache to {slots} slots")
        pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])  # noqa: E731
        return self.replace(keys=tuple(pad(k, 3) for k in self.keys), values=tuple(pad(v, 2) for v in self.values),
                            valid=pad(self.valid, 1), positions=pad(self.positions, 1))

    def per_row_index(self) -> "KVCache":
        """The same cache with the shared write index copied to every row (``index`` ``[batch]``)."""
        return self.replace(index=jnp.broadcast_to(self.index, self.valid.shape[:1]))

    def repeat(self, n: int) -> "KVCache":
        """Every row ``n`` times in a row (row ``r`` -> rows ``r*n .. r*n + n-1``): ``n`` continuations of
        each prefilled prompt share its prefill."""
        if n == 1:
            return self
        rows = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731
        return self.replace(keys=tuple(map(rows, self.keys)), values=tuple(map(rows, self.values)),
                            valid=rows(self.valid), positions=rows(self.positions))


def init_kv_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    """An empty cache (nothing valid, ``index`` 0) with ``slots`` slots per row."""
    key_shape, value_shape = cache_shapes(cfg, batch, slots)
    dtype = to_dtype(cfg.dtype)
    return KVCache(
        keys=tuple(jnp.zeros(key_shape, dtype) for _ in range(cfg.num_layers)),
        values=tuple(jnp.zeros(value_shape, dtype) for _ in range(cfg.num_layers)),
        valid=jnp.zeros((batch, slots), bool),
        positions=jnp.zeros((batch, slots), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def cache_shapes(cfg: ModelConfig, batch: int, slots: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one layer's key and value buffers."""
    return (batch, cfg.num_kv_heads, cfg.head_dim, slots), (batch, cfg.num_kv_heads, slots, cfg.head_dim)
