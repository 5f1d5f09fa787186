"""Token log-probabilities without materialising ``[batch, seq, vocab]`` float32 logits.

The vocabulary projection runs over chunks of target tokens (``lax.map``),
each under ``jax.checkpoint``: the backward pass recomputes one chunk's logits
at a time and keeps only the chunk inputs. A chunk takes the same stretch of
``chunk_tokens(batch, ...) // batch`` targets from every row, so peak memory is
about ``chunk_size * vocab`` floats whatever the batch (not ``batch * targets *
vocab``). The loop runs along the targets, never across rows: the rows stay a
batch axis of every chunk, so a row-sharded batch (data parallelism) projects
each device's own rows. Chunks cut from the flattened ``[batch * targets]``
mixed the rows, and XLA then gathered every row onto every device, which
projected the whole batch there (8 data-parallel devices: 8x the work;
``tests/test_data_parallel_collectives.py``).

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

from jaxalign.models.transformer import layout_from_attention_mask

DEFAULT_CHUNK_SIZE = 256


def _chunk_stats(
    weights: jax.Array, hidden: jax.Array, targets: jax.Array, vocab_axis: int, with_entropy: bool
) -> tuple[jax.Array, ...]:
    """weights ``[hidden, vocab]`` (``vocab_axis=1``) or ``[vocab, hidden]`` (0), hidden ``[b, k, hidden]``,
    targets ``[b, k]`` -> (log-probs ``[b, k]`` float32, whether the target is the argmax ``[b, k]`` bool
    [, entropy of the distribution ``[b, k]`` float32])."""
    rows, per_row, features = hidden.shape
    # One [b * k, hidden] matmul: with two free axes XLA:CPU ran the chunk 1.4-1.7x slower.
    contract = (((1,), (1 - vocab_axis,)), ((), ()))
    logits = jax.lax.dot_general(hidden.reshape(rows * per_row, features), weights, contract,
                                 preferred_element_type=jnp.float32)
    targets = targets.reshape(rows * per_row)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    out = (picked - normaliser, picked >= jnp.max(logits, axis=-1))
    if with_entropy:
        probs = jnp.exp(logits - normaliser[..., None])
        out += (normaliser - jnp.sum(probs * logits, axis=-1),)
    return tuple(x.reshape(rows, per_row) for x in out)


def chunk_tokens(batch: int, length: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Target tokens one chunk of ``logps_from_hidden`` projects: the same number from each
    of the ``batch`` rows, at most ``chunk_size // batch`` but at least one (so ``batch``
    when the rows outnumber ``chunk_size``). The chunks split a row's ``length`` targets
    evenly, so their padding is under one target a row per chunk, not most of a chunk."""
    most = max(1, min(chunk_size // max(batch, 1), length))
    chunks = math.ceil(length / most)
    return batch * math.ceil(length / chunks)


def logps_from_hidden(
    hidden: jax.Array, weights: jax.Array, target_ids: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE,
    *, return_hits: bool = False, return_entropy: bool = False, vocab_axis: int = 1,
) -> jax.Array | tuple[jax.Array, ...]:
    """log p(target | context) ``[b, c]`` float32.

    hidden ``[b, c, h]`` (the outputs that predict each target), weights
    ``[h, vocab]`` (or ``[vocab, h]`` with ``vocab_axis=0``: a tied embedding as
    stored), target_ids ``[b, c]``; about ``chunk_size`` target tokens (over all
    rows) per chunk (``chunk_tokens`` gives the count). The matmul runs in
    hidden's dtype with float32 accumulation. With ``return_hits`` also
    ``[b, c]`` bool: whether the target is the model's top-1 token (for token
    accuracy); with ``return_entropy`` also ``[b, c]`` float32: the entropy of
    each position's distribution (PPO). Extras follow the log-probs in that
    order.
    """
    batch, length, features = hidden.shape
    if length == 0:
        empty = jnp.zeros((batch, 0), jnp.float32)
        extras = (empty.astype(bool),) * return_hits + (empty,) * return_entropy
        return (empty, *extras) if extras else empty
    per_row = chunk_tokens(batch, length, chunk_size) // batch
    num_chunks = math.ceil(length / per_row)
    pad = num_chunks * per_row - length
    # [num_chunks, batch, per_row, ...]: lax.map walks the leading axis; rows stay a batch axis.
    hidden_chunks = jnp.moveaxis(jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(
        batch, num_chunks, per_row, features), 1, 0)
    target_chunks = jnp.moveaxis(jnp.pad(target_ids.astype(jnp.int32), ((0, 0), (0, pad))).reshape(
        batch, num_chunks, per_row), 1, 0)
    weights = weights.astype(hidden.dtype)
    chunk_stats = jax.checkpoint(functools.partial(_chunk_stats, vocab_axis=vocab_axis, with_entropy=return_entropy))
    chunked = jax.lax.map(lambda xs: chunk_stats(weights, *xs), (hidden_chunks, target_chunks))
    logps, hits, *entropy = (jnp.moveaxis(out, 0, 1).reshape(batch, -1)[:, :length] for out in chunked)
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
