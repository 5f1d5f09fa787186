"""Pure pieces of the teacher-forced pass over ``[prompt | completion]`` rows.

Shapes: R rows, Lp prompt slots (left-padded: every prompt ends in column
Lp - 1), N completion slots, H hidden size. Completion masks are float
``[R, N]`` (1 up to and including the stop token, 0 after it and in padding
rows). Each row computes exactly what the sampler saw: positions continue each
prompt, padding is segment 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.models import layout_from_attention_mask, logps_from_hidden

LOGPS_CHUNK = 256  # target tokens (over all rows) per chunk of the vocabulary projection


def sequences(prompt_ids: jax.Array, prompt_mask: jax.Array, completion_ids: jax.Array,
              completion_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``[prompt | completion]`` ids, positions and segment ids ``[R, Lp + N]``."""
    ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask.astype(jnp.int32)], axis=1)
    positions, segment_ids = layout_from_attention_mask(mask)
    return ids, positions, segment_ids


def completion_hidden(hidden: jax.Array, prompt_length: int) -> jax.Array:
    """``[R, Lp + N, H]`` -> ``[R, N, H]``: the outputs that predict each completion token
    (the last prompt token predicts the first completion token)."""
    return hidden[:, prompt_length - 1:-1]


def completion_logps(projection: tuple[jax.Array, int], hidden: jax.Array, tokens: jax.Array,
                     temperature: float) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies ``[R, N]`` of the completion tokens under softmax(logits / temperature),
    the distribution they were sampled from (as TRL does), without holding ``[R, N, V]`` logits.

    projection: ``model.output_projection()`` (weights as stored, vocab axis); hidden ``[R, N, H]``,
    tokens ``[R, N]``."""
    weights, vocab_axis = projection
    hidden = hidden / jnp.asarray(temperature, hidden.dtype)  # logits / T = (hidden / T) @ W
    return logps_from_hidden(hidden, weights, tokens, LOGPS_CHUNK, return_entropy=True, vocab_axis=vocab_axis)


def policy_pass(model, prompt_ids: jax.Array, prompt_mask: jax.Array, completion_ids: jax.Array,
                completion_mask: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One forward of a ``CausalLM`` over the rows: (log-probs ``[R, N]``, entropies ``[R, N]``,
    the completion positions' hidden states ``[R, N, H]``, e.g. for a value head)."""
    ids, positions, segment_ids = sequences(prompt_ids, prompt_mask, completion_ids, completion_mask)
    hidden = completion_hidden(model.hidden_states(ids, positions, segment_ids), prompt_ids.shape[1])
    logps, entropy = completion_logps(model.output_projection(), hidden, completion_ids, temperature)
    return logps, entropy, hidden


def last_token_scores(per_position: jax.Array, prompt_length: int, completion_mask: jax.Array) -> jax.Array:
    """A reward model's per-position scores ``[R, Lp + N]`` -> the score at each completion's
    last token ``[R]`` (0 for padding rows and empty completions)."""
    lengths = jnp.sum(completion_mask, axis=1).astype(jnp.int32)
    last = prompt_length + jnp.maximum(lengths, 1) - 1
    scores = jnp.take_along_axis(per_position, last[:, None], axis=1)[:, 0]
    return jnp.where(lengths > 0, scores, 0.0)


def ended_with_stop(tokens: jax.Array, mask: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    """``[R]`` bool: the completion emitted a stop token (it was not cut by the length limit)."""
    hit = jnp.zeros(tokens.shape, bool)
    for stop in stop_ids:
        hit = hit | (tokens == stop)
    return jnp.any(hit & (mask > 0), axis=1)
