"""Token log-probabilities without materialising ``[batch, seq, vocab]`` float32 logits.

The vocabulary projection runs over chunks of target tokens (``lax.map``),
each under ``jax.checkpoint``: the backward pass recomputes one chunk's logits
at a time and keeps only the chunk inputs. Chunks are ``chunk_size`` tokens of
the flattened ``[batch * targets]``, so peak memory is ``chunk_size * vocab``
floats whatever the batch (not ``batch * targets * vocab``).

The projection is taken as it is stored: a tied embedding ``[vocab, hidden]``
(``vocab_axis=0``) or an ``lm_head`` kernel ``[hidden, vocab]``
(``vocab_axis=1``). Passing ``embedding.T`` instead makes XLA materialise the
transposed ``[hidden, vocab]`` copy for the backward pass (measured on XLA:CPU:
+519 MiB at Qwen2.5-0.5B's vocabulary, ``benchmarks/lora_memory.py``).
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
    weights: jax.Array, hidden: jax.Array, targets: jax.Array, vocab_axis: int, with_entropy: bool
) -> tuple[jax.Array, ...]:
    """weights ``[hidden, vocab]`` (``vocab_axis=1``) or ``[vocab, hidden]`` (0), hidden ``[k, hidden]``,
    targets ``[k]`` -> (log-probs ``[k]`` float32, whether the target is the argmax ``[k]`` bool
    [, entropy of the distribution ``[k]`` float32])."""
    contract = (((1,), (1 - vocab_axis,)), ((), ()))
    logits = jax.lax.dot_general(hidden, weights, contract, preferred_element_type=jnp.float32)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    out = (picked - normaliser, picked >= jnp.max(logits, axis=-1))
    if with_entropy:
        probs = jnp.exp(logits - normaliser[..., None])
        out += (normaliser - jnp.sum(probs * logits, axis=-1),)
    return out


def logps_from_hidden(
    hidden: jax.Array, weights: jax.Array, target_ids: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE,
    *, return_hits: bool = False, return_entropy: bool = False, vocab_axis: int = 1,
) -> jax.Array | tuple[jax.Array, ...]:
    """log p(target | context) ``[b, c]`` float32.

    hidden ``[b, c, h]`` (the outputs that predict each target), weights
    ``[h, vocab]`` (or ``[vocab, h]`` with ``vocab_axis=0``: a tied embedding as
    stored), target_ids ``[b, c]``; ``chunk_size`` target tokens (over all rows)
    per chunk. The matmul runs in hidden's dtype with float32 accumulation. With
    ``return_hits`` also ``[b, c]`` bool: whether the target is the model's top-1
    token (for token accuracy); with ``return_entropy`` also ``[b, c]`` float32:
    the entropy of each position's distribution (PPO). Extras follow the
    log-probs in that order.
    """
    batch, length, features = hidden.shape
    if length == 0:
        empty = jnp.zeros((batch, 0), jnp.float32)
        extras = (empty.astype(bool),) * return_hits + (empty,) * return_entropy
        return (empty, *extras) if extras else empty
    tokens = batch * length
    chunk = max(1, min(chunk_size, tokens))
    num_chunks = math.ceil(tokens / chunk)
    pad = num_chunks * chunk - tokens
    # [num_chunks, chunk, ...]: lax.map walks the leading axis.
    hidden_chunks = jnp.pad(hidden.reshape(tokens, features), ((0, pad), (0, 0))).reshape(num_chunks, chunk, features)
    target_chunks = jnp.pad(target_ids.astype(jnp.int32).reshape(tokens), (0, pad)).reshape(num_chunks, chunk)
    weights = weights.astype(hidden.dtype)
    chunk_stats = jax.checkpoint(functools.partial(_chunk_stats, vocab_axis=vocab_axis, with_entropy=return_entropy))
    chunked = jax.lax.map(lambda xs: chunk_stats(weights, *xs), (hidden_chunks, target_chunks))
    logps, hits, *entropy = (out.reshape(num_chunks * chunk)[:tokens].reshape(batch, length) for out in chunked)
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
    weights, vocab_axis = model.output_projection()
    return logps_from_hidden(hidden, weights, target_ids, chunk_size, return_hits=return_hits, vocab_axis=vocab_axis)


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
