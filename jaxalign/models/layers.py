"""Building blocks: parameters with logical axis names, linear maps, embeddings, norms.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds its
logical axis names (``("embed", "mlp")``, ...); ``jaxalign.sharding`` turns
those into mesh shardings. Eager sharding is off: placement is decided by the
loader (``jaxalign.models.partition``), not at construction.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def matmul(x: jax.Array, kernel: jax.Array, preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """``x [..., k] @ kernel [k, n] -> [..., n]`` as one 2-D matmul.

    With several leading axes, XLA's CPU backward transposes activations for the
    weight gradient, costing as much as the matmuls themselves (measured: a
    SwiGLU MLP's gradient ran 2x faster once flattened).
    """
    flat = x.reshape(-1, x.shape[-1])
    out = jax.lax.dot(flat, kernel, preferred_element_type=preferred_element_type)
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


def to_dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Axes, dtype: jnp.dtype, init: str, std: float = 0.02) -> nnx.Param:
    """A parameter initialised with ``init`` ("normal" | "uniform" | "zeros" | "ones") and tagged with ``axes``.

    "uniform" draws from ``U(-std, std)`` (``std`` is the bound).

    The init rule is kept as metadata (``init``, ``init_std``) so that
    ``jaxalign.models.init`` can draw values on the host, parameter by
    parameter, without compiling a random-number program per parameter.
    """
    shape = tuple(shape)
    if init == "normal":
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    elif init == "uniform":
        value = jax.random.uniform(rngs.params(), shape, jnp.float32, -std, std).astype(dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False, init=init, init_std=float(std))


class LoraKey(nnx.Variable):
    """The dropout key of one adapter for one train step (set by ``jaxalign.models.lora.with_dropout``)."""


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` contracting the last ``len(in_shape)`` axes of ``x``.

    kernel: ``[*in_shape, *out_shape]``; x: ``[..., *in_shape]`` -> ``[..., *out_shape]``.
    Multi-axis shapes keep heads as their own axis, e.g. q: ``[embed, heads, head_dim]``.

    With a LoRA adapter (``add_adapter``; ``jaxalign.models.lora``) the output gains
    ``scale * dropout(x) @ lora_a @ lora_b``: ``lora_a`` ``[*in_shape, rank]`` and
    ``lora_b`` ``[rank, *out_shape]`` carry the kernel's own logical axes, so they
    shard like it. A model without adapters has the same graph as before.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Axes,
        out_axes: Axes,
        *,
        use_bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        std: float = 0.02,
    ):
        self.num_in = len(in_shape)
        self.dtype = dtype
        self.kernel = param(rngs, (*in_shape, *out_shape), (*in_axes, *out_axes), param_dtype, "normal", std)
        self.bias = param(rngs, out_shape, out_axes, param_dtype, "zeros") if use_bias else None
        # Set by add_adapter; declared as data so a Param can take their place later.
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_key = nnx.data(None)
        self.lora_scale = 0.0
        self.lora_dropout = 0.0

    def add_adapter(self, rank: int, scale: float, dropout: float, param_dtype: jnp.dtype,
                    rngs: nnx.Rngs | None) -> None:
        """Adds a LoRA adapter of ``rank``: ``lora_a`` ~ U(+-1/sqrt(fan_in)) (PEFT's default),
        ``lora_b`` zeros, so the adapted layer starts equal to the base.
        Raises ``ValueError`` when ``rank`` exceeds the flattened matrix's smaller side."""
        kernel = self.kernel
        axes = tuple(kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim)
        in_shape, out_shape = kernel.shape[: self.num_in], kernel.shape[self.num_in:]
        fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
        if rank > min(fan_in, fan_out):
            raise ValueError(f"rank {rank} is larger than the {fan_in} x {fan_out} matrix it adapts "
                             f"(at most {min(fan_in, fan_out)})")
        self.lora_a = param(rngs, (*in_shape, rank), (*axes[: self.num_in], None), param_dtype, "uniform",
                            1.0 / math.sqrt(fan_in))
        self.lora_b = param(rngs, (rank, *out_shape), (None, *axes[self.num_in:]), param_dtype, "zeros")
        self.lora_scale = float(scale)
        self.lora_dropout = float(dropout)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        in_shape, out_shape = kernel.shape[: self.num_in], kernel.shape[self.num_in:]
        lead = x.shape[: x.ndim - self.num_in]
        flat = x.astype(self.dtype).reshape(*lead, math.prod(in_shape))
        y = matmul(flat, kernel.reshape(math.prod(in_shape), math.prod(out_shape)))
        if self.lora_a is not None:
            y = y + self._adapter(flat)
        y = y.reshape(*lead, *out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y

    def _adapter(self, flat: jax.Array) -> jax.Array:
        """``scale * dropout(flat) @ a @ b`` over flattened in/out axes: ``[..., in] -> [..., out]``."""
        a, b = self.lora_a[...].astype(self.dtype), self.lora_b[...].astype(self.dtype)
        rank = a.shape[-1]
        if self.lora_key is not None and self.lora_dropout > 0:  # training: the step set a key
            keep = jax.random.bernoulli(self.lora_key[...], 1.0 - self.lora_dropout, flat.shape)
            flat = jnp.where(keep, flat / (1.0 - self.lora_dropout), 0).astype(self.dtype)
        down = matmul(flat, a.reshape(-1, rank))
        return matmul(down, b.reshape(rank, -1)) * jnp.asarray(self.lora_scale, self.dtype)


class Embed(nnx.Module):
    """Lookup table ``[num, features]``; ids ``[...]`` -> ``[..., features]``."""

    def __init__(self, num: int, features: int, axes: Axes, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs, std: float = 0.02):
        self.dtype = dtype
        self.embedding = param(rngs, (num, features), axes, param_dtype, "normal", std)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` over the last axis, computed in float32."""

    def __init__(self, features: int, eps: float, *, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(None, (features,), ("norm",), param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    """``(x - mean) / std * scale + bias`` over the last axis, computed in float32."""

    def __init__(self, features: int, eps: float, *, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(None, (features,), ("norm",), param_dtype, "ones")
        self.bias = param(None, (features,), ("norm",), param_dtype, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def _gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": _gelu_exact,  # HF "gelu" is the exact erf form
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": jax.nn.relu,
}


def residual_std(initializer_range: float, num_layers: int) -> float:
    """Init std for projections that write into the residual stream (GPT-2 scales them by 1/sqrt(2L))."""
    return initializer_range / math.sqrt(2 * num_layers)
