"""Every attention backend computes the reference packed attention (values and gradients).

The Pallas kernel runs in interpret mode on CPU; the cuDNN backend's arguments
are checked through ``jax.nn.dot_product_attention``'s XLA implementation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.config import ModelSpec
from jaxalign.models import load_pretrained
from jaxalign.models.attention import dot_product_attention, packed_mask
from jaxalign.models.attention_backends import CudnnMask, attention_layout, resolve_backend
from jaxalign.models.config import ModelConfig
from jaxalign.models.flash_attention import FlashOptions, flash_attention, segment_bounds
from model_fixtures import make_causal_lm
from test_tiled_attention import random_packed_layout


def _packed_inputs(seed: int, length: int, heads: int = 4, kv_heads: int = 2, dim: int = 8):
    """Two rows of [prompt | chosen | rejected] examples, then padding (about 20% of each row)."""
    rng = np.random.default_rng(seed)
    segments, branches, positions = random_packed_layout(rng, rows=2, length=length, fill=0.75)
    tail = segments.shape[1] - int(0.2 * length)
    segments[:, tail:], branches[:, tail:], positions[:, tail:] = 0, 0, 0
    q = jnp.asarray(rng.normal(size=(2, length, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, length, kv_heads, dim)), jnp.float32) for _ in range(2))
    return tuple(jnp.asarray(x) for x in (segments, branches, positions)), (q, k, v)


def _assert_same_attention(attend, ids, qkv, window, scale=0.3):
    """Outputs on every token (padding included: it sees itself) and gradients of a nonlinear read-out."""
    mask = packed_mask(*ids, window)

    def reference(q, k, v):
        return dot_product_attention(q, k, v, mask, scale)

    weights = jnp.asarray(np.random.default_rng(0).normal(size=qkv[0].shape), jnp.float32)

    def values_and_gradients(f):
        """The output and the gradients of sum(sin(output) * weights), in one compile per backend
        (the interpret-mode kernel's compile is most of this file's time), not one for each."""
        def run(*args):
            out, pullback = jax.vjp(f, *args)
            return out, pullback(jnp.cos(out) * weights)
        return jax.jit(run)

    got_out, got = values_and_gradients(attend)(*qkv)
    want_out, want = values_and_gradients(reference)(*qkv)
    np.testing.assert_allclose(np.asarray(got_out), np.asarray(want_out), atol=2e-6)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("window, blocks", [(None, (8, 16)), (5, (16, 8))])
def test_pallas_flash_attention_equals_reference_values_and_gradients(window, blocks):
    """Packed rows of several examples with chosen/rejected branches and padding, grouped-query
    heads (4 over 2), a row length (44) that is not a multiple of the blocks, unequal blocks."""
    ids, qkv = _packed_inputs(seed=1, length=44)
    options = FlashOptions(scale=0.3, block_q=blocks[0], block_k=blocks[1], window=window, interpret=True)
    _assert_same_attention(lambda q, k, v: flash_attention(q, k, v, *ids, options=options), ids, qkv, window)


def test_pallas_block_bounds_hold_for_repeated_and_left_padded_segments():
    """Bounds come from each id's first and last token, so an id split into two runs (and left
    padding, as ``attention_mask`` batches give) still sees all of itself."""
    segments = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1],
                            [0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]], jnp.int32)
    starts, ends = segment_bounds(segments)
    np.testing.assert_array_equal(np.asarray(starts[0]), [0, 1, 2, 3, 3, 3, 3, 3, 8, 8, 8, 8, 3, 3, 3, 3])
    np.testing.assert_array_equal(np.asarray(ends[0]), [1, 2, 3] + [16] * 5 + [12] * 4 + [16] * 4)
    ids = (segments, jnp.zeros_like(segments), jnp.zeros_like(segments))
    rng = np.random.default_rng(2)
    qkv = tuple(jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32) for _ in range(3))
    options = FlashOptions(scale=0.3, block_q=4, block_k=4, interpret=True)
    _assert_same_attention(lambda q, k, v: flash_attention(q, k, v, *ids, options=options), ids, qkv, None)


def test_cudnn_backend_passes_the_packed_mask_to_jax_dot_product_attention():
    ids, qkv = _packed_inputs(seed=4, length=24)
    layout = CudnnMask(packed_mask(*ids)[:, None], implementation="xla")  # "cudnn" needs a GPU
    _assert_same_attention(lambda q, k, v: layout.attend(q, k, v, 0.3), ids, qkv, None)


def test_backend_choice_by_platform_dtype_and_config():
    assert resolve_backend("auto", "float32", has_tiles=True, platform="cpu") == "tiled"
    assert resolve_backend("auto", "bfloat16", has_tiles=False, platform="cpu") == "xla"
    assert resolve_backend("auto", "bfloat16", has_tiles=True, platform="gpu") == "pallas"
    assert resolve_backend("auto", "float32", has_tiles=False, platform="gpu") == "pallas"
    assert resolve_backend("cudnn", "bfloat16", has_tiles=True, platform="gpu") == "cudnn"
    assert resolve_backend("tiled", "float32", has_tiles=False, platform="cpu") == "xla"
    assert resolve_backend("pallas", "float32", has_tiles=True, platform="cpu") == "pallas"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU and model.dtype bfloat16 or float16"):
        resolve_backend("cudnn", "bfloat16", has_tiles=True, platform="cpu")
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, attention="flash")
    with pytest.raises(ValueError, match="model.attention must be one of auto, xla, tiled, cudnn, pallas, got 'flash'"):
        ModelSpec(config={"vocab_size": 8}, attention="flash")
    layout = attention_layout("pallas", *(jnp.zeros((1, 4), jnp.int32),) * 3, platform="cpu")
    assert layout.interpret


def test_decoder_with_pallas_backend_equals_default(tmp_path):
    """A real decoder (Mistral: GQA and a sliding window) on a packed batch."""
    make_causal_lm("mistral_sliding", tmp_path, seed=2)
    rng = np.random.default_rng(7)
    segments, branches, positions = random_packed_layout(rng, rows=1, length=20, fill=0.8)
    ids = jnp.asarray(np.where(segments > 0, rng.integers(1, 100, segments.shape), 0), jnp.int32)
    args = (ids, jnp.asarray(positions), jnp.asarray(segments), jnp.asarray(branches))
    hidden = {}
    for backend in ("auto", "pallas"):
        model = load_pretrained(tmp_path, attention=backend)
        assert model.config.attention == backend
        hidden[backend] = np.asarray(jax.jit(lambda m, *a: m.hidden_states(*a))(model, *args))
    np.testing.assert_allclose(hidden["pallas"], hidden["auto"], atol=2e-5)


def test_pallas_kernels_lower_to_triton_for_gpu():
    """Forward and backward lower through Pallas's Triton path for CUDA on a CPU-only machine
    (jax.export), so a GPU run does not meet a lowering error; compiling to PTX needs a GPU."""
    from jax import export

    q = jax.ShapeDtypeStruct((1, 128, 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((1, 128), jnp.int32)
    options = FlashOptions(scale=0.125, window=32)

    def loss(q, k, v, *ids):
        return jnp.sum(flash_attention(q, k, v, *ids, options=options).astype(jnp.float32) ** 2)

    triton = "__gpu$xla.gpu.triton"
    exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["cuda"],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])(q, kv, kv, ids, ids, ids)
    assert exported.mlir_module().count(f"@{triton}") == 3  # forward, dq, dk/dv


def test_run_config_model_attention_reaches_the_model():
    from jaxalign.algos import common
    from jaxalign.config import config_class
    from jaxalign.sharding import MeshConfig, make_mesh
    from train_fixtures import TINY_LLAMA

    cfg = config_class("dpo")(algo="dpo", model=ModelSpec(config={**TINY_LLAMA, "vocab_size": 64}, attention="pallas"))
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    assert common.build_model(cfg.model, cfg, mesh, "causal_lm").config.attention == "pallas"
