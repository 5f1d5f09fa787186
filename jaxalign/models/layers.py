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
    """A parameter initialised with ``init`` ("normal" | "zeros" | "ones") and tagged with ``axes``.

    The init rule is kept as metadata (``init``, ``init_std``) so that
    ``jaxalign.models.init`` can draw values on the host, parameter by
    parameter, without compiling a random-number program per parameter.
    """
    shape = tuple(shape)
    if init == "normal":
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False, init=init, init_std=float(std))


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` contracting the last ``len(in_shape)`` axes of ``x``.

    kernel: ``[*in_shape, *out_shape]``; x: ``[..., *in_shape]`` -> ``[..., *out_shape]``.
    Multi-axis shapes keep heads as their own axis, e.g. q: ``[embed, heads, head_dim]``.
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

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        in_shape, out_shape = kernel.shape[: self.num_in], kernel.shape[self.num_in:]
        lead = x.shape[: x.ndim - self.num_in]
        flat = x.astype(self.dtype).reshape(*lead, math.prod(in_shape))
        y = matmul(flat, kernel.reshape(math.prod(in_shape), math.prod(out_shape))).reshape(*lead, *out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


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
