"""``ScoreModel``: a decoder with a scalar head, for reward and value models.

Matches Hugging Face ``*ForSequenceClassification`` with ``num_labels=1``
(``score.weight`` ``[1, hidden]``, no bias). It scores every position; callers
pick the score at an example's last token (``end_index`` in the packed batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import Linear, matmul, to_dtype
from jaxalign.models.transformer import Decoder, resolve_layout


class ScoreModel(nnx.Module):
    """Decoder + ``score``: hidden ``[.., hidden]`` -> one float per position."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.model = Decoder(cfg, rngs=rngs)
        self.score = Linear(
            (cfg.hidden_size,), (1,), ("embed",), (None,), use_bias=False,
            dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype), rngs=rngs, std=cfg.initializer_range,
        )

    def hidden_states(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        branch_ids: jax.Array | None = None,
        tile_pairs: jax.Array | None = None,
    ) -> jax.Array:
        """``[batch, seq]`` inputs -> ``[batch, seq, hidden]`` after the final norm
        (block-sparse attention over ``tile_pairs`` if given)."""
        return self.model(input_ids, positions, segment_ids, branch_ids, tile_pairs)

    def scores_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """``[..., hidden]`` -> ``[...]`` float32 scores."""
        kernel = self.score.kernel[...].astype(hidden.dtype)
        return matmul(hidden, kernel, preferred_element_type=jnp.float32)[..., 0]

    def scores(
        self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array, branch_ids: jax.Array | None = None
    ) -> jax.Array:
        """Per-position scores ``[batch, seq]`` float32 for the packed layout."""
        return self.scores_from_hidden(self.hidden_states(input_ids, positions, segment_ids, branch_ids))

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Same as ``scores``; alternatively pass only a 0/1 ``attention_mask`` ``[batch, seq]``."""
        positions, segment_ids = resolve_layout(input_ids, attention_mask, positions, segment_ids)
        return self.scores(input_ids, positions, segment_ids, branch_ids)
