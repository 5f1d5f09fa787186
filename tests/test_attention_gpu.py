"""On a GPU: the Pallas kernel compiled by Triton, and the cuDNN backend, compute the packed attention.

CPU runs check the Pallas kernel in interpret mode (``test_attention_backends.py``);
these tests check the code a GPU runs. Skipped where jax has no GPU (CI has none).
On a GPU machine::

    JAX_PLATFORMS=cuda python -m pytest tests/test_attention_gpu.py --noconftest -n 0 -q

(``--noconftest``: the suite's conftest asks for 8 fake CPU devices. ``-n 0``: one process;
without the conftest's cap, pyproject's ``-n auto`` would start a worker per core, and each
would claim most of the GPU's memory.)

Each backend is measured against the float32 reference computed at the highest
matmul precision, and must be no further from it than XLA's own attention in the
same dtype (GPUs round float32 products through TF32 by default and bfloat16
everywhere), with a floor for outputs where XLA happens to be exact. A wrong mask
(a branch or segment leaking, a window off by one) moves outputs by O(1), far
past either bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models.attention import dot_product_attention, packed_mask
from jaxalign.models.attention_backends import attention_layout
from test_tiled_attention import random_packed_layout

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run on a lent device)")

FLOOR = {"float32": 2e-3, "bfloat16": 2e-2}


def _inputs(seed: int, length: int, heads: int, kv_heads: int, dim: int):
    rng = np.random.default_rng(seed)
    segments, branches, positions = random_packed_layout(rng, rows=2, length=length, fill=0.8)
    q = rng.normal(size=(2, length, heads, dim)).astype(np.float32)
    k, v = (rng.normal(size=(2, length, kv_heads, dim)).astype(np.float32) for _ in range(2))
    weights = rng.normal(size=q.shape).astype(np.float32)
    return tuple(jnp.asarray(x) for x in (segments, branches, positions)), (q, k, v), jnp.asarray(weights)


def _values_and_gradients(attend, qkv, weights, dtype):
    """Output ``[b, s, heads, d]`` and dq, dk, dv of sum(sin(output) * weights), in float32."""
    def run(q, k, v):
        out, pullback = jax.vjp(attend, q, k, v)
        return out, pullback((jnp.cos(out.astype(jnp.float32)) * weights).astype(out.dtype))

    out, grads = jax.jit(run)(*(jnp.asarray(x, dtype) for x in qkv))
    return [np.asarray(x.astype(jnp.float32)) for x in (out, *grads)]


def _errors(got, want, real):
    """Largest absolute difference on real tokens, per output (out, dq, dk, dv)."""
    return [float(np.max(np.abs((g - w) * real))) for g, w in zip(got, want)]


def _check_backend(backend: str, dtype: str, window, dim: int, length: int = 300):
    ids, qkv, weights = _inputs(seed=dim + (window or 0), length=length, heads=8, kv_heads=2, dim=dim)
    scale = dim ** -0.5
    mask = packed_mask(*ids, window)

    def reference(q, k, v):
        return dot_product_attention(q, k, v, mask, scale)

    def under_test(q, k, v):
        return attention_layout(backend, *ids, window=window).attend(q, k, v, scale)

    with jax.default_matmul_precision("highest"):
        exact = _values_and_gradients(reference, qkv, weights, jnp.float32)
    xla = _values_and_gradients(reference, qkv, weights, jnp.dtype(dtype))
    got = _values_and_gradients(under_test, qkv, weights, jnp.dtype(dtype))
    real = np.asarray(ids[0] != 0)[:, :, None, None]
    for name, error, bound in zip(("output", "dq", "dk", "dv"), _errors(got, exact, real), _errors(xla, exact, real)):
        assert error <= max(2 * bound, FLOOR[dtype]), (
            f"{backend} {dtype}: {name} is {error:.3g} from the exact attention; XLA's own is {bound:.3g}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window, dim", [(None, 64), (48, 128)])
def test_pallas_kernel_compiled_for_gpu_equals_reference(dtype, window, dim):
    """Row length 300 (not a multiple of the 64-token blocks), grouped-query heads (8 over 2),
    branches, padding, and a sliding window."""
    _check_backend("pallas", dtype, window, dim)


@pytest.mark.parametrize("dim", [64, 128])
def test_cudnn_backend_equals_reference(dim):
    _check_backend("cudnn", "bfloat16", None, dim, length=320)
