"""Picking the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Pure functions of ``[batch, vocab]`` float32 logits that run once per decode
step, so every full-vocabulary pass is O(vocab) and cheap on any backend:

- greedy: max, then the first index holding it (XLA's CPU argmax, a
  variadic reduce, is ~5x slower);
- sampling: inverse CDF with one uniform number per row, in two levels
  (blocks of ``CDF_BLOCK`` tokens, then a token within the block) instead of
  one Gumbel number per vocabulary entry;
- top-k: a two-level ``lax.top_k`` (best blocks by their maximum, then the
  best tokens among those blocks), about half the cost of one over the
  whole vocabulary on CPU;
- top-p: the nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most
  likely tokens; only when those do not hold ``top_p`` of the mass (a flat
  distribution) is its threshold found exactly by bisection over the float
  bit patterns (32 masked sums). Nothing sorts the whole vocabulary: a
  [16, 32k] sort costs ~100 ms on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.generation.config import SamplingConfig

# Top-p candidates tried before the exact threshold search; a trained LM's
# nucleus at p=0.9 is usually within a few dozen tokens.
NUCLEUS_CANDIDATES = 64
CDF_BLOCK = 256
TOP_K_BLOCK = 32


def policy_logps(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token] ``[batch]`` float32.

    logits ``[batch, vocab]``, tokens ``[batch]``. On raw logits this is the
    policy's own log-prob (temperature 1, no truncation).
    """
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def first_argmax(logits: jax.Array) -> jax.Array:
    """Index of the (first) largest entry along the last axis, int32."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(logits == best, index, logits.shape[-1]), axis=-1)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` over the last axis of ``x`` ``[batch, n]``: values and int32 indices ``[batch, k]``.

    For large ``n`` it first keeps the k blocks of ``TOP_K_BLOCK`` entries with
    the largest maxima: the k largest entries all lie in those blocks (a block
    holding one of them has a maximum at least as large as the k-th).
    """
    batch, size = x.shape
    if size < 4 * k * TOP_K_BLOCK:
        return jax.lax.top_k(x, k)
    num_blocks = -(-size // TOP_K_BLOCK)
    padded = jnp.pad(x, ((0, 0), (0, num_blocks * TOP_K_BLOCK - size)), constant_values=-jnp.inf)
    blocks = padded.reshape(batch, num_blocks, TOP_K_BLOCK)
    _, best_blocks = jax.lax.top_k(blocks.max(axis=-1), k)
    candidates = jnp.take_along_axis(blocks, best_blocks[:, :, None], axis=1).reshape(batch, k * TOP_K_BLOCK)
    values, position = jax.lax.top_k(candidates, k)
    block = jnp.take_along_axis(best_blocks, position // TOP_K_BLOCK, axis=1)
    return values, block * TOP_K_BLOCK + position % TOP_K_BLOCK


def _inverse_cdf(weights: jax.Array, target: jax.Array) -> jax.Array:
    """First index whose cumulative weight exceeds ``target``, never a zero-weight index.

    weights ``[batch, n]`` >= 0, target ``[batch]`` in [0, total).
    """
    index = jnp.sum(jnp.cumsum(weights, axis=-1) <= target[:, None], axis=-1, dtype=jnp.int32)
    # Rounding can put target at or past the total: fall back to the last positive weight.
    positions = jnp.arange(weights.shape[-1], dtype=jnp.int32)
    last_positive = jnp.max(jnp.where(weights > 0, positions, 0), axis=-1)
    return jnp.minimum(index, last_positive)


def row_uniforms(key: jax.Array, batch: int) -> jax.Array:
    """``[batch]`` uniform numbers in [0, 1): from one key, or one from each of ``batch`` keys
    (a ``[batch]`` array of typed keys or ``[batch, 2]`` raw ones), so a row's draw can depend
    on that row's key alone."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):
        return jax.vmap(lambda k: jax.random.uniform(k))(key)
    return jax.random.uniform(key, (batch,))


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Samples an index ``[batch]`` int32 with probability softmax(logits); -inf entries are never drawn.

    logits ``[batch, n]``. One uniform number per row (inverse CDF), from ``key`` or, given
    one key per row, from the row's own (``row_uniforms``).
    """
    batch, size = logits.shape
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    if size <= CDF_BLOCK:
        target = row_uniforms(key, batch) * weights.sum(axis=-1)
        return _inverse_cdf(weights, target)
    num_blocks = -(-size // CDF_BLOCK)
    blocks = jnp.pad(weights, ((0, 0), (0, num_blocks * CDF_BLOCK - size))).reshape(batch, num_blocks, CDF_BLOCK)
    block_mass = blocks.sum(axis=-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    target = row_uniforms(key, batch) * block_cdf[:, -1]
    block = _inverse_cdf(block_mass, target)
    before = jnp.where(block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inside = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    return block * CDF_BLOCK + _inverse_cdf(inside, target - before)


def nucleus_logits(sorted_logits: jax.Array, sorted_logprobs: jax.Array, top_p: float) -> jax.Array:
    """Keeps the smallest most-likely prefix whose probability reaches ``top_p``; the rest -> -inf.

    sorted_logits ``[batch, c]`` in descending order, sorted_logprobs
    ``[batch, c]`` their log-probabilities under the distribution being
    truncated. A token is kept when the mass strictly before it is below
    ``top_p`` (transformers' ``TopPLogitsWarper`` rule), so the first always is.
    """
    probs = jnp.exp(sorted_logprobs)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)


def _ordered_bits(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negative floats flipped, positive ones above them)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def nucleus_mask(logprobs: jax.Array, top_p: float) -> jax.Array:
    """Boolean ``[batch, vocab]``: tokens whose more likely tokens hold less than ``top_p`` of the mass.

    Unsorted: bisects, per row, for the smallest value t with
    ``mass(logprobs > t) < top_p`` over the 2^32 ordered bit patterns; the
    nucleus is then every token >= t. Ties are kept together.
    """
    keys = _ordered_bits(logprobs)
    probs = jnp.exp(logprobs)

    def mass_above(threshold: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(keys > threshold[:, None], probs, 0.0), axis=-1)

    def halve(_, bounds):  # invariant: mass_above(low) >= top_p > mass_above(high)
        low, high = bounds
        middle = low + (high - low) // 2
        enough = mass_above(middle) >= top_p
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    low = jnp.zeros(logprobs.shape[:1], jnp.uint32)
    high = jnp.max(keys, axis=-1)
    _, high = jax.lax.fori_loop(0, 32, halve, (low, high))
    return keys >= high[:, None]


def _pick(key: jax.Array, logits: jax.Array, ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Samples from softmax(logits) ``[batch, c]``; returns (token ``[batch]`` int32, its log-prob ``[batch]``).

    ``ids`` ``[batch, c]`` maps candidate columns to token ids (None: the column is the id).
    """
    choice = categorical(key, logits)
    logp = policy_logps(logits, choice)
    token = choice if ids is None else jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    return token.astype(jnp.int32), logp


def _top_p_sample(key: jax.Array, scaled: jax.Array, top_p: float) -> tuple[jax.Array, jax.Array]:
    """Nucleus sampling over the whole vocabulary (exact either way the ``cond`` goes)."""
    vocab = scaled.shape[-1]
    log_norm = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    if vocab <= NUCLEUS_CANDIDATES:
        values, ids = jax.lax.top_k(scaled, vocab)
        return _pick(key, nucleus_logits(values, values - log_norm, top_p), ids)
    values, ids = top_k(scaled, NUCLEUS_CANDIDATES)
    candidate_logprobs = values - log_norm
    # Every row's nucleus lies among its candidates iff their mass reaches top_p.
    covered = jnp.all(jnp.exp(candidate_logprobs).sum(axis=-1) >= top_p)

    def among_candidates() -> tuple[jax.Array, jax.Array]:
        return _pick(key, nucleus_logits(values, candidate_logprobs, top_p), ids)

    def whole_vocabulary() -> tuple[jax.Array, jax.Array]:
        return _pick(key, jnp.where(nucleus_mask(scaled - log_norm, top_p), scaled, -jnp.inf))

    return jax.lax.cond(covered, among_candidates, whole_vocabulary)


def sample_tokens(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """Next tokens ``[batch]`` int32 and their log-probs ``[batch]`` float32 under the
    distribution actually sampled from (temperature, then top-k, then top-p; 0 for greedy).

    logits ``[batch, vocab]`` float32 (raw model outputs); key: one key, or one per row (``row_uniforms``).
    """
    if cfg.greedy:
        return first_argmax(logits), jnp.zeros(logits.shape[:1], jnp.float32)
    scaled = logits / cfg.temperature
    vocab = scaled.shape[-1]
    if 0 < cfg.top_k < vocab:
        values, ids = top_k(scaled, cfg.top_k)
        if cfg.top_p < 1.0:  # nucleus of the renormalised top-k distribution, as transformers does
            values = nucleus_logits(values, jax.nn.log_softmax(values, axis=-1), cfg.top_p)
        return _pick(key, values, ids)
    if cfg.top_p < 1.0:
        return _top_p_sample(key, scaled, cfg.top_p)
    return _pick(key, scaled)
