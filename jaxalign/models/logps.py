"""Token log-probabilities without materialising ``[batch, seq, vocab]`` float32 logits.

The vocabulary projection runs over chunks of target tokens (``lax.map``),
each under ``jax.checkpoint``: the backward pass recomputes one chunk's logits
at a time and keeps only the chunk inputs, so peak memory is
``batch * chunk_size * vocab`` floats instead of ``batch * targets * vocab``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.layers import matmul
from jaxalign.models.transformer import layout_from_attention_mask

DEFAULT_CHUNK_SIZE = 256


def _chunk_stats(
    weights: jax.Array, hidden: jax.Array, targets: jax.Array, with_entropy: bool
) -> tuple[jax.Array, ...]:
    """weights ``[hidden, vocab]``, hidden ``[b, k, hidden]``, targets ``[b, k]`` ->
    (log-probs ``[b, k]`` float32, whether the target is the argmax ``[b, k]`` bool
    [, entropy of the distribution ``[b, k]`` float32])."""
    logits = matmul(hidden, weights, preferred_element_type=jnp.float32)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    out = (picked - normaliser, picked >= jnp.max(logits, axis=-1))
    if with_entropy:
        probs = jnp.exp(logits - normaliser[..., None])
        out += (normaliser - jnp.sum(probs * logits, axis=-1),)
    return out


def logps_from_hidden(
    hidden: jax.Array, weights: jax.Array, target_ids: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE,
    *, return_hits: bool = False, return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    """log p(target | context) ``[b, c]`` float32.

    hidden ``[b, c, h]`` (the outputs that predict each target), weights
    ``[h, vocab]``, target_ids ``[b, c]``. The matmul runs in hidden's dtype
    with float32 accumulation. With ``return_hits`` also ``[b, c]`` bool:
    whether the target is the model's top-1 token (for token accuracy); with
    ``return_entropy`` also ``[b, c]`` float32: the entropy of each position's
    distribution (PPO). Extras follow the log-probs in that order.
    """
    batch, length, features = hidden.shape
    if length == 0:
        empty = jnp.zeros((batch, 0), jnp.float32)
        extras = (empty.astype(bool),) * return_hits + (empty,) * return_entropy
        return (empty, *extras) if extras else empty
    chunk = max(1, min(chunk_size, length))
    num_chunks = math.ceil(length / chunk)
    pad = num_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(target_ids.astype(jnp.int32), ((0, 0), (0, pad)))
    # [num_chunks, b, chunk, ...]: lax.map walks the leading axis.
    hidden_chunks = hidden.reshape(batch, num_chunks, chunk, features).swapaxes(0, 1)
    target_chunks = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)
    weights = weights.astype(hidden.dtype)
    chunk_stats = jax.checkpoint(functools.partial(_chunk_stats, with_entropy=return_entropy))
    chunked = jax.lax.map(lambda xs: chunk_stats(weights, *xs), (hidden_chunks, target_chunks))
    logps, hits, *entropy = (out.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :length] for out in chunked)
    extras = (hits,) * return_hits + tuple(entropy)
    return (logps, *extras) if extras else logps


def token_logps(
    model: nnx.Module, hidden: jax.Array, target_ids: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE,
    *, return_hits: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(target | context) ``[b, c]`` float32 for a ``CausalLM`` (and, with
    ``return_hits``, whether each target is the top-1 token, ``[b, c]`` bool).

    hidden ``[b, c, h]``: hidden states already gathered at the positions that
    predict ``target_ids`` ``[b, c]`` (see ``jaxalign.batch.gather_positions``).
    """
    return logps_from_hidden(hidden, model.output_embedding(), target_ids, chunk_size, return_hits=return_hits)


def sequence_token_logps(
    model: nnx.Module, input_ids: jax.Array, attention_mask: jax.Array | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> jax.Array:
    """Next-token log-probs ``[b, seq - 1]``: entry t is log p(input_ids[:, t + 1] | input_ids[:, :t + 1]).

    With padding, entries whose target is padding are meaningless; mask them
    with ``attention_mask[:, 1:]``.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    positions, segment_ids = layout_from_attention_mask(attention_mask)
    hidden = model.hidden_states(input_ids, positions, segment_ids)
    return token_logps(model, hidden[:, :-1], input_ids[:, 1:], chunk_size)
