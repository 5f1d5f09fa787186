"""Listwise reward-model losses: the scores ``[N, M]`` of a ranking's replies, best first."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import ListwiseInputs
from jaxalign.losses.registry import register_loss

Array = jax.Array

_ABSENT = -1e9  # an absent reply's score: exp() gives exactly 0, gradients stay finite


@register_loss("plackett_luce", kind="listwise", needs_reference=False)
def plackett_luce_loss(inputs: ListwiseInputs, cfg: LossConfig) -> Array:
    """Plackett-Luce negative log-likelihood of the ranking (Plackett 1975; Luce 1959):

    ``-sum_{k < K} [s_k - log sum_{j >= k} exp(s_j)]``

    over the example's K present replies in rank order: the best reply is picked
    from all, the second from the rest, and so on. For K = 2 this is exactly
    Bradley-Terry's ``-log sigma(s_1 - s_2)``.
    """
    present = inputs.reply_mask > 0
    scores = jnp.where(present, inputs.rewards, _ABSENT)
    rest = jax.lax.cumlogsumexp(scores, axis=1, reverse=True)  # log sum_{j >= k} exp(s_j)
    later = jnp.flip(jnp.cumsum(jnp.flip(present, axis=1), axis=1), axis=1) - present  # present replies after k
    terms = jnp.where(present & (later > 0), rest - scores, 0.0)
    return jnp.sum(terms, axis=1)
