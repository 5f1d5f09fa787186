"""The decoder family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, GPT-2) and the causal LM on top.

Attribute names follow Hugging Face's Llama layout (``model.layers[i].self_attn.q_proj``)
for every family, so ``jaxalign.models.hf_names`` maps tensors with simple
rules. Pre-norm blocks; the residual stream is kept in ``cfg.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.attention import Attention
from jaxalign.models.attention_backends import attention_layout, resolve_backend
from jaxalign.models.config import ModelConfig
from jaxalign.models.kv_cache import KVCache, LayerCache
from jaxalign.models.layers import ACTIVATION_FNS, Embed, LayerNorm, Linear, RMSNorm, matmul, residual_std, to_dtype
from jaxalign.models.rope import inverse_frequencies, rope_tables

REMAT_POLICY = {
    "full": None,  # save nothing inside the layer; recompute all of it (recomputed_in_backward)
    # Keep weight-matmul outputs (projections), recompute the rest; attention
    # scores have batch dimensions and are recomputed, so no [seq, seq] is kept.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layout_from_attention_mask(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions and segment_ids ``[batch, seq]`` int32 from a 0/1 padding mask ``[batch, seq]``.

    Real tokens count positions from 0 whichever side the padding is on; padding
    gets segment 0 and so never influences real tokens.
    """
    mask = attention_mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    return positions, mask


def resolve_layout(
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    positions: jax.Array | None,
    segment_ids: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """positions and segment_ids, given explicitly or derived from ``attention_mask`` (default: all ones)."""
    if attention_mask is not None and segment_ids is not None:
        raise ValueError("pass either attention_mask or segment_ids, not both")
    if attention_mask is None and segment_ids is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if attention_mask is not None:
        derived_positions, segment_ids = layout_from_attention_mask(attention_mask)
        positions = derived_positions if positions is None else positions
    if positions is None:
        raise ValueError("positions are required with segment_ids")
    return positions, segment_ids


def _norm(cfg: ModelConfig, features: int) -> nnx.Module:
    dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
    if cfg.family == "gpt2":
        return LayerNorm(features, cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)
    return RMSNorm(features, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)


class MLP(nnx.Module):
    """Gated (SwiGLU: ``down(act(gate(x)) * up(x))``) for the llama family, ``down(act(up(x)))`` for gpt2."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        e, i = cfg.hidden_size, cfg.intermediate_size
        common = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = cfg.initializer_range
        gated = cfg.family == "llama"
        self.gate_proj = Linear((e,), (i,), ("embed",), ("mlp",), std=std, **common) if gated else None
        self.up_proj = Linear((e,), (i,), ("embed",), ("mlp",), std=std, **common)
        down_std = std if gated else residual_std(std, cfg.num_layers)
        self.down_proj = Linear((i,), (e,), ("mlp",), ("embed",), std=down_std, **common)
        self.activation = cfg.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATION_FNS[self.activation]
        if self.gate_proj is None:
            return self.down_proj(act(self.up_proj(x)))
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    """One pre-norm transformer layer: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer_index: int, *, rngs: nnx.Rngs):
        self.input_layernorm = _norm(cfg, cfg.hidden_size)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = _norm(cfg, cfg.hidden_size)
        self.mlp = MLP(cfg, rngs=rngs)
        self.sliding = cfg.uses_sliding_window(layer_index)

    def __call__(
        self, x: jax.Array, cos: jax.Array | None, sin: jax.Array | None, mask, cache: LayerCache | None = None
    ) -> jax.Array | tuple[jax.Array, LayerCache]:
        """With ``cache`` (see ``Attention``) also returns the updated layer cache."""
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        if cache is not None:
            attended, cache = attended
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x if cache is None else (x, cache)


def _run_block(block: Block, remat: str, *args: jax.Array | None) -> jax.Array:
    """Runs ``block``, recomputed in the backward pass unless remat is "none": "full" keeps
    only the block's inputs (``recomputed_in_backward``), "dots" goes through
    ``jax.checkpoint`` with its saving policy. ``args[0]`` is the residual stream."""
    if remat == "none":
        return block(*args)
    graphdef, state = nnx.split(block)

    def apply(state, *args):
        return nnx.merge(graphdef, state)(*args)

    if remat == "full":
        return recomputed_in_backward(apply)(state, *args)
    return jax.checkpoint(apply, policy=REMAT_POLICY[remat])(state, *args)


def recomputed_in_backward(fn):
    """``fn(params, x, *rest)`` whose backward pass recomputes its forward from the saved
    inputs (nothing else is kept, as with ``jax.checkpoint`` and no saving policy), and
    finishes the parameters' gradients before it hands ``x``'s cotangent on.

    Why not ``jax.checkpoint``: it leaves the order of the backward's operations to XLA,
    and XLA:CPU deferred each layer's weight-gradient matmuls (small outputs, e.g. a LoRA
    adapter's ``[rank, out]``, from inputs of ``[tokens, intermediate]``) to the end of the
    backward pass, which kept every layer's recomputed activations alive at once
    (``benchmarks/lora_memory.py``, 494M model, DPO step with LoRA: 7.6 GiB; with this
    function 2.7 GiB). Optimization barriers do not help there: XLA:CPU removes them
    before scheduling. A data dependence does: ``x``'s cotangent gets ``0 * sum(gradients)``
    added, so the next layer's backward cannot start before this layer's gradients exist
    (a non-finite gradient then makes the whole step non-finite, which the health check
    reports anyway). The barrier on the inputs and the cotangent keeps XLA from merging
    the recomputation with the forward pass (``jax.checkpoint``'s ``prevent_cse``) where
    barriers are honoured (GPU, TPU)."""
    def forward(*inputs):
        return fn(*inputs), inputs

    def backward(inputs, cotangent):
        inputs, cotangent = jax.lax.optimization_barrier((inputs, cotangent))
        grads = jax.vjp(fn, *inputs)[1](cotangent)
        leaves = [g for g in jax.tree.leaves(grads[0]) if jnp.issubdtype(g.dtype, jnp.floating)]
        tie = sum(jnp.sum(g.astype(jnp.float32)) for g in leaves) * 0.0
        return (grads[0], grads[1] + tie.astype(grads[1].dtype), *grads[2:])

    wrapped = jax.custom_vjp(fn)
    wrapped.defvjp(forward, backward)
    return wrapped


class Decoder(nnx.Module):
    """Embeddings, the layer stack and the final norm; outputs hidden states."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        embed = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, std=cfg.initializer_range)
        self.config = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **embed)
        self.embed_positions = (
            Embed(cfg.max_position_embeddings, cfg.hidden_size, ("positions", "embed"), **embed)
            if cfg.family == "gpt2" else None
        )
        self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = _norm(cfg, cfg.hidden_size)

    def embed(self, input_ids: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Token embeddings ``[batch, seq, hidden]`` plus either learned positions
        (GPT-2; cos/sin None) or the RoPE tables for ``positions``."""
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            return x + self.embed_positions(positions), None, None
        cos, sin = rope_tables(positions, inverse_frequencies(self.config))
        return x, cos, sin

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        branch_ids: jax.Array | None = None,
        tile_pairs: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """All inputs ``[batch, seq]`` int -> hidden states ``[batch, seq, hidden]`` in ``cfg.dtype``.

        Attention runs on the backend ``cfg.attention`` names
        (``jaxalign.models.attention_backends``). With ``tile_pairs``
        ``[batch, P, 2]`` (``jaxalign.batch``) the tiled backend runs on those
        tiles only; real tokens get the same outputs, and query tiles with no
        pair (row padding) come out of attention as zeros.

        With ``cache`` (``jaxalign.models.kv_cache``) the ``seq`` tokens are new
        tokens of each row (segment 0 = padding, anything else = a real token;
        no packing): they are written at ``cache.index`` and attend to the
        cache's valid slots up to their own. Returns ``(hidden, updated cache)``.
        """
        cfg = self.config
        x, cos, sin = self.embed(input_ids, positions)
        if cache is not None:
            if branch_ids is not None or tile_pairs is not None:
                raise ValueError("a KV-cache forward takes one sequence per row: no branch_ids or tile_pairs")
            cache = cache.mark_slots(positions, segment_ids)

            def mask_for(window: int | None):
                return cache.mask(positions, window)
        else:
            backend = resolve_backend(cfg.attention, cfg.dtype, has_tiles=tile_pairs is not None)

            def mask_for(window: int | None):
                return attention_layout(backend, segment_ids, branch_ids, positions, tile_pairs, window)
        full_mask = mask_for(None)
        sliding_mask = None
        if any(block.sliding for block in self.layers):
            sliding_mask = mask_for(cfg.sliding_window)
        layer_caches = []
        for i, block in enumerate(self.layers):
            mask = sliding_mask if block.sliding else full_mask
            if cache is None:
                x = _run_block(block, cfg.remat, x, cos, sin, mask)
            else:  # inference: nothing to rematerialise
                x, layer_cache = block(x, cos, sin, mask, cache.layer(i))
                layer_caches.append(layer_cache)
        x = self.norm(x)
        return x if cache is None else (x, cache.with_layers(layer_caches, input_ids.shape[1]))


class CausalLM(nnx.Module):
    """Decoder + vocabulary projection (tied to the token embeddings or a separate ``lm_head``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.model = Decoder(cfg, rngs=rngs)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            (cfg.hidden_size,), (cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
            dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype), rngs=rngs, std=cfg.initializer_range,
        )

    def hidden_states(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        branch_ids: jax.Array | None = None,
        tile_pairs: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """``[batch, seq]`` ids/positions/segments (/branches) -> ``[batch, seq, hidden]`` after the final norm.

        Attention follows ``jaxalign.batch.attention_mask(segment_ids, branch_ids)``
        (``branch_ids`` None = all zeros), block-sparse over ``tile_pairs`` if given.
        With a KV ``cache``: ``(hidden, updated cache)`` (see ``Decoder.__call__``).
        """
        return self.model(input_ids, positions, segment_ids, branch_ids, tile_pairs, cache)

    def output_projection(self) -> tuple[jax.Array, int]:
        """``(weights, vocab_axis)``: the projection to logits as stored, the tied embedding
        ``[vocab, hidden]`` (axis 0) or ``lm_head``'s kernel ``[hidden, vocab]`` (axis 1), for
        ``logps_from_hidden`` (a transposed view would be copied whole for the backward pass)."""
        if self.lm_head is None:
            return self.model.embed_tokens.embedding[...], 0
        return self.lm_head.kernel[...], 1

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """``[..., hidden]`` -> float32 logits ``[..., vocab]``."""
        weights, vocab_axis = self.output_projection()
        weights = (weights.T if vocab_axis == 0 else weights).astype(hidden.dtype)  # [hidden, vocab]
        return matmul(hidden, weights, preferred_element_type=jnp.float32)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Logits ``[batch, seq, vocab]`` float32 (and the updated cache when one is given).

        Give either a 0/1 ``attention_mask`` ``[batch, seq]`` (left or right
        padding; positions = cumsum(mask) - 1) or the packed layout
        (``positions`` + ``segment_ids`` [+ ``branch_ids``]). With a KV
        ``cache`` and a mask, positions continue from the tokens the cache holds.
        """
        derived = positions is None
        positions, segment_ids = resolve_layout(input_ids, attention_mask, positions, segment_ids)
        if cache is None:
            return self.logits_from_hidden(self.hidden_states(input_ids, positions, segment_ids, branch_ids))
        if derived:
            positions = positions + jnp.sum(cache.valid, axis=1, dtype=jnp.int32)[:, None]
        hidden, cache = self.hidden_states(input_ids, positions, segment_ids, branch_ids, cache=cache)
        return self.logits_from_hidden(hidden), cache
