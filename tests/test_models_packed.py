"""The packed layout (segments, prompt|chosen|rejected branches) equals running each sequence alone."""

import jax
import numpy as np
import pytest

from jaxalign.batch import gather_positions
from jaxalign.models import layout_from_attention_mask, load_pretrained, sequence_token_logps, token_logps
from model_fixtures import make_causal_lm

ATOL = 1e-5


# mistral_sliding covers the llama family plus the position-based sliding window; gpt2 learned positions.
@pytest.fixture(scope="module", params=["mistral_sliding", "gpt2"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_causal_lm(request.param, folder, seed=1)
    return load_pretrained(folder)


ROW = 14  # every packed row and every reference batch uses this length, so each compiles once
TARGETS = 10


@jax.jit
def _packed(model, ids, positions, segments, branches, target_index, target_ids):
    hidden = model.hidden_states(ids, positions, segments, branches)
    return hidden, token_logps(model, gather_positions(hidden, target_index), target_ids, chunk_size=4)


@jax.jit
def _reference(model, ids, mask):
    positions, segments = layout_from_attention_mask(mask)
    return model.hidden_states(ids, positions, segments), sequence_token_logps(model, ids, mask)


def _run_separately(model, *sequences):
    """Each sequence in its own right-padded row (padding is inert: see test_models_parity)."""
    ids = np.zeros((2, ROW), np.int64)
    mask = np.zeros((2, ROW), np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    hidden, logps = map(np.asarray, _reference(model, ids, mask))
    return [(hidden[row, : len(seq)], logps[row, : len(seq) - 1]) for row, seq in enumerate(sequences)]


def _pad_targets(target_index, target_ids):
    extra = TARGETS - len(target_index)
    return np.array([list(target_index) + [0] * extra]), np.array([list(target_ids) + [0] * extra])


def test_two_segments_in_one_row(model):
    rng = np.random.RandomState(0)
    a, b = rng.randint(1, 128, 5), rng.randint(1, 128, 7)
    ids = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
    positions = np.array([list(range(5)) + list(range(7)) + [0, 0]])
    # Targets: every next token inside each segment.
    index = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    target_index, target_ids = _pad_targets(index, ids[0, np.array(index) + 1])

    hidden, logps = _packed(model, ids, positions, segments, np.zeros_like(ids), target_index, target_ids)
    hidden, logps = np.asarray(hidden[0]), np.asarray(logps[0])
    (hidden_a, logps_a), (hidden_b, logps_b) = _run_separately(model, a, b)
    np.testing.assert_allclose(hidden[:5], hidden_a, atol=ATOL)
    np.testing.assert_allclose(hidden[5:12], hidden_b, atol=ATOL)
    np.testing.assert_allclose(logps, np.concatenate([logps_a, logps_b]), atol=ATOL)


def test_prompt_chosen_rejected_branches(model):
    """Rejected tokens see the prompt but not the chosen reply; positions continue from the prompt."""
    rng = np.random.RandomState(1)
    prompt, chosen, rejected = rng.randint(1, 128, 4), rng.randint(1, 128, 3), rng.randint(1, 128, 5)
    ids = np.concatenate([prompt, chosen, rejected, [0, 0]])[None]
    segments = np.array([[1] * 12 + [0, 0]])
    branches = np.array([[0] * 4 + [1] * 3 + [2] * 5 + [0, 0]])
    positions = np.array([list(range(7)) + list(range(4, 9)) + [0, 0]])
    # chosen targets predicted from rows 3..5, rejected from row 3 (last prompt token), then 7..10.
    target_index, target_ids = _pad_targets([3, 4, 5, 3, 7, 8, 9, 10], np.concatenate([chosen, rejected]))

    hidden, logps = _packed(model, ids, positions, segments, branches, target_index, target_ids)
    hidden, logps = np.asarray(hidden[0]), np.asarray(logps[0])
    (hidden_c, logps_c), (hidden_r, logps_r) = _run_separately(
        model, np.concatenate([prompt, chosen]), np.concatenate([prompt, rejected])
    )
    np.testing.assert_allclose(hidden[:7], hidden_c, atol=ATOL)
    np.testing.assert_allclose(hidden[7:12], hidden_r[4:], atol=ATOL)
    np.testing.assert_allclose(logps[:3], logps_c[3:], atol=ATOL)
    np.testing.assert_allclose(logps[3:8], logps_r[3:], atol=ATOL)
