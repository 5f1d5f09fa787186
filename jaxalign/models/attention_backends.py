"""Attention backends for the packed layout, chosen by ``model.attention`` and the platform.

Every backend computes the same attention: ``jaxalign.batch.attention_mask``
(segments, branches, causal order, every token sees itself), optionally
narrowed to a sliding window in positions. The decoder builds one *layout*
per forward with ``attention_layout`` (shared by all layers) and each layer
calls ``jaxalign.models.attention.attend(q, k, v, layout, scale)``, which runs
``layout.attend``. A layout is a pytree, so it passes through ``jax.checkpoint``.

Backends (``ModelConfig.attention``):

- ``xla``: dense masked attention over a ``[b, s, s]`` mask (the reference).
- ``tiled``: block-sparse XLA attention over the batch's ``tile_pairs``
  (``jaxalign.models.tiled_attention``); without ``tile_pairs`` (forwards
  outside the packed training batches) it is ``xla``.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``
  (cuDNN flash attention; GPU, bfloat16/float16). Its public API takes no
  segment ids (only per-row lengths, a causal flag and a window), so the
  packed mask goes in as a dense boolean ``[b, 1, s, s]`` mask, which cuDNN
  applies as a bias, together with ``is_causal`` so it skips the upper
  triangle.
- ``pallas``: the flash-attention kernel of ``jaxalign.models.flash_attention``,
  with the mask computed in the kernel from segment, branch and position ids
  (O(seq) memory). On CPU it runs in Pallas interpret mode (tests only: slow).
- ``auto``: ``pallas`` on GPU (on an H200, in bfloat16 at 1,024-4,096
  tokens, forward + backward 1.8-3.8x faster than ``cudnn`` and 3.6-20x faster
  than ``xla``: docs/benchmarks.md); otherwise ``tiled`` when the batch has
  ``tile_pairs`` and ``xla`` when not (what every CPU run used before backends
  existed).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.batch import ATTENTION_TILE
from jaxalign.models import attention
from jaxalign.models.config import ATTENTION_BACKENDS
from jaxalign.models.tiled_attention import tile_layout

HALF_DTYPES = ("bfloat16", "float16")


def resolve_backend(name: str, dtype: str, has_tiles: bool, platform: str | None = None) -> str:
    """The concrete backend for ``model.attention = name`` on ``platform`` (default: jax's default backend).

    ``dtype`` is the compute dtype (``ModelConfig.dtype``); ``has_tiles``
    whether the batch carries ``tile_pairs``.
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention must be one of {ATTENTION_BACKENDS}, got {name!r}")
    platform = platform or jax.default_backend()
    if name == "auto":
        name = "pallas" if platform == "gpu" else "tiled"
    if name == "cudnn" and (platform != "gpu" or dtype not in HALF_DTYPES):
        raise ValueError(
            f"model.attention 'cudnn' needs a GPU and model.dtype bfloat16 or float16; this run has "
            f"platform {platform!r} and dtype {dtype!r}. Use model.attention: auto, xla, tiled or pallas"
        )
    if name == "tiled" and not has_tiles:
        return "xla"
    return name


class DenseMask(NamedTuple):
    """``mask`` ``[b, s, s]`` bool (query, key)."""

    mask: jax.Array

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
        return attention.dot_product_attention(q, k, v, self.mask, scale)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CudnnMask:
    """``mask`` ``[b, 1, s, s]`` bool for ``jax.nn.dot_product_attention``; ``implementation``
    "cudnn" (or "xla", which tests use on CPU to check what the cudnn backend passes)."""

    mask: jax.Array
    implementation: str = dataclasses.field(default="cudnn", metadata=dict(static=True))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
        # The packed mask is already causal; is_causal lets cuDNN skip the upper triangle.
        return jax.nn.dot_product_attention(
            q, k, v, mask=self.mask, scale=scale, is_causal=True, implementation=self.implementation)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlashLayout:
    """Per-token ids ``[b, s]`` int32 for the Pallas kernel and its static settings."""

    segment_ids: jax.Array
    branch_ids: jax.Array
    positions: jax.Array
    starts: jax.Array  # segment_bounds, computed once for all layers
    ends: jax.Array
    window: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    interpret: bool = dataclasses.field(default=False, metadata=dict(static=True))
    block_q: int = dataclasses.field(default=64, metadata=dict(static=True))
    block_k: int = dataclasses.field(default=64, metadata=dict(static=True))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
        from jaxalign.models.flash_attention import FlashOptions, flash_attention

        options = FlashOptions(scale=scale, block_q=self.block_q, block_k=self.block_k,
                               window=self.window, interpret=self.interpret)
        return flash_attention(q, k, v, self.segment_ids, self.branch_ids, self.positions,
                               (self.starts, self.ends), options=options)


def attention_layout(
    backend: str,
    segment_ids: jax.Array,
    branch_ids: jax.Array | None,
    positions: jax.Array,
    tile_pairs: jax.Array | None = None,
    window: int | None = None,
    platform: str | None = None,
):
    """What ``backend`` (a resolved name) needs to attend over the packed layout; ids ``[b, s]``."""
    if branch_ids is None:
        branch_ids = jnp.zeros_like(segment_ids)
    if backend == "tiled":
        return tile_layout(tile_pairs, ATTENTION_TILE, segment_ids, branch_ids, positions, window)
    if backend == "pallas":
        # Imported here: Pallas and its Triton lowering cost every process ~90 ms to import.
        from jaxalign.models.flash_attention import segment_bounds

        starts, ends = segment_bounds(segment_ids)
        interpret = (platform or jax.default_backend()) == "cpu"
        return FlashLayout(segment_ids, branch_ids, positions, starts, ends, window=window, interpret=interpret)
    mask = attention.packed_mask(segment_ids, branch_ids, positions, window)
    if backend == "cudnn":
        return CudnnMask(mask[:, None])
    return DenseMask(mask)
