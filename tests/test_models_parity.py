"""Logits and token log-probs match transformers (torch, float32) for every supported architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import CausalLM, load_pretrained, sequence_token_logps
from model_fixtures import ARCHS, make_causal_lm, padded_batch, torch_logits, torch_next_token_logps

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    torch_model = make_causal_lm(request.param, folder)
    return request.param, folder, torch_model


@jax.jit
def _forward(model, ids, mask):
    """Logits and next-token log-probs in one compiled call (compiles once per architecture)."""
    return model(ids, mask), sequence_token_logps(model, ids, mask, chunk_size=5)  # 11 targets: 3 chunks


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_logits_and_logps_match_transformers(checkpoint, padding):
    arch, folder, torch_model = checkpoint
    model = load_pretrained(folder)
    assert isinstance(model, CausalLM)
    ids, mask = padded_batch(padding)
    expected = torch_logits(torch_model, ids, mask)

    logits, logps = map(np.asarray, _forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert np.abs(logits - expected)[real].max() < TOLERANCE, arch

    expected_logps = torch_next_token_logps(expected, ids)
    scored = real[:, :-1] & real[:, 1:]
    assert logps.dtype == np.float32
    assert np.abs(logps - expected_logps)[scored].max() < TOLERANCE, arch


def test_padding_side_and_pad_ids_do_not_change_real_tokens(checkpoint):
    """One 8-token sequence: left-padded, right-padded, right-padded with random pad ids."""
    _, folder, _ = checkpoint
    model = load_pretrained(folder)
    seq = np.random.RandomState(3).randint(1, 100, size=8)
    ids = np.zeros((3, 12), np.int64)
    mask = np.zeros((3, 12), np.int64)
    ids[0, 4:], mask[0, 4:] = seq, 1
    ids[1, :8], mask[1, :8] = seq, 1
    ids[2, :8], mask[2, :8], ids[2, 8:] = seq, 1, [7, 99, 5, 1]
    logits, _ = map(np.asarray, _forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(logits[0, 4:], logits[1, :8], atol=1e-5)
    np.testing.assert_allclose(logits[2, :8], logits[1, :8], atol=1e-6)
