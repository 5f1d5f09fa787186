"""Continuous batching (``SamplingConfig.slots``): the same rows as one static batch, bounded compiles, meshes."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign.generation import SamplingConfig, generate
from jaxalign.generation import continuous
from jaxalign.models import load_pretrained
from jaxalign.sharding import MeshConfig, make_mesh
from model_fixtures import VOCAB, make_causal_lm

NEW = 12
# Log-probs agree to float32 rounding, not bit for bit: XLA's CPU matmul kernels depend on how
# many rows a call has (a refill prefills 1-2 prompts, the static batch all of them). Measured
# max difference 4.8e-7; tokens and lengths are compared exactly.
LOGP_ATOL = 1e-5


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_causal_lm("llama", folder)
    return folder, load_pretrained(folder)


def varied_prompts() -> tuple[np.ndarray, np.ndarray]:
    """Seven left-padded prompts of lengths 9, 2, 7, 1, 5, 8, 3 and one padding row (index 3)."""
    rng = np.random.RandomState(1)
    lengths = [9, 2, 7, 0, 1, 5, 8, 3]
    mask = np.array([[0] * (9 - n) + [1] * n for n in lengths], np.int32)
    return rng.randint(1, VOCAB, size=mask.shape).astype(np.int32) * mask, mask


def stops_hit_at_varied_steps(model, ids, mask, cfg, num_samples) -> tuple[int, ...]:
    """Stop ids taken from a run without stops, so that rows stop at different steps."""
    free = generate(model, ids, mask, jax.random.key(7), dataclasses.replace(cfg, stop_at_eos=False),
                    num_samples=num_samples)
    tokens = np.asarray(free.tokens)
    return tuple(sorted({int(tokens[0, 2]), int(tokens[2 * num_samples, 5]), int(tokens[-1, 0])}))


def assert_same_rows(got, expected) -> None:
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(expected.lengths))
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(expected.mask))
    np.testing.assert_allclose(np.asarray(got.logps), np.asarray(expected.logps), atol=LOGP_ATOL)
    np.testing.assert_allclose(np.asarray(got.sampling_logps), np.asarray(expected.sampling_logps), atol=LOGP_ATOL)
    assert int(got.steps) == int(expected.steps)


GREEDY, TOP_K = dict(temperature=0.0), dict(temperature=1.0, top_k=20)


@pytest.mark.parametrize("sampling, num_samples, slot_counts", [
    pytest.param(GREEDY, 3, (2,), id="greedy-n3"),
    pytest.param(TOP_K, 3, (5,), id="top_k-n3"),
    pytest.param(GREEDY, 1, (1, 5), id="greedy-n1", marks=pytest.mark.slow),
    pytest.param(TOP_K, 1, (1, 2), id="top_k-n1", marks=pytest.mark.slow),
    pytest.param(TOP_K, 3, (1, 2), id="top_k-n3-more", marks=pytest.mark.slow),
])
def test_slots_give_the_rows_of_one_static_batch(llama, sampling, num_samples, slot_counts):
    """Each row's tokens, log-probs and length are the static batch's, whatever the slot count
    (refills of one prompt and of several, rows that stop early, a padding row)."""
    _, model = llama
    ids, mask = varied_prompts()
    cfg = SamplingConfig(NEW, stop_at_eos=False, **sampling)
    cfg = dataclasses.replace(cfg, stop_token_ids=stops_hit_at_varied_steps(model, ids, mask, cfg, num_samples))
    expected = generate(model, ids, mask, jax.random.key(7), cfg, num_samples=num_samples)
    lengths = np.asarray(expected.lengths).reshape(len(ids), num_samples)
    assert (lengths[3] == 0).all() and len(set(lengths[[0, 1, 2, 4, 5, 6, 7]].ravel())) >= 3  # stops at varied steps
    for slots in slot_counts:
        got = generate(model, ids, mask, jax.random.key(7), dataclasses.replace(cfg, slots=slots),
                       num_samples=num_samples)
        assert_same_rows(got, expected)


def test_refill_and_decode_compile_once_per_shape(llama):
    """Many refills (16 rows through 2 slots), one compiled program each for refill and decode."""
    _, model = llama
    ids, mask = varied_prompts()
    cfg = SamplingConfig(NEW - 1, top_k=9, slots=2, stop_token_ids=tuple(range(1, VOCAB // 6)))
    before = (continuous._refill_jit._cache_size(), continuous._chunk_jit._cache_size())
    out = generate(model, ids, mask, jax.random.key(2), cfg, num_samples=2)
    after = (continuous._refill_jit._cache_size(), continuous._chunk_jit._cache_size())
    assert after == (before[0] + 1, before[1] + 1)
    assert len(set(np.asarray(out.lengths).tolist())) >= 3  # rows really stopped (and were refilled) at varied steps


@pytest.mark.slow  # ~50 s under load: compiles the static and the continuous programs on a mesh
def test_slots_with_a_mesh_and_a_shared_prefix(llama):
    """Rows split over a mesh (8 fake devices, batch axes 4) and a shared prefix: the static batch's rows."""
    folder, single = llama
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = load_pretrained(folder, mesh=mesh)
    ids, mask = varied_prompts()
    prefix = np.array([5, 17, 3, 29, 8], np.int32)
    cfg = SamplingConfig(NEW, top_k=20, stop_token_ids=tuple(range(1, VOCAB // 8)), stop_at_eos=False)
    expected = generate(single, ids, mask, jax.random.key(3), cfg, prefix_ids=prefix, num_samples=2)
    got = generate(sharded, ids, mask, jax.random.key(3), dataclasses.replace(cfg, slots=4), mesh=mesh,
                   prefix_ids=prefix, num_samples=2)
    assert got.tokens.addressable_shards[0].data.shape == (4, NEW)  # 16 rows split over data x fsdp = 4
    assert_same_rows(got, expected)


def test_bad_slot_counts_are_one_clear_line(llama):
    _, model = llama
    ids, mask = varied_prompts()
    with pytest.raises(ValueError, match=r"slots must be >= 1 .* got -2"):
        SamplingConfig(NEW, slots=-2)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with pytest.raises(ValueError, match=r"slots 6 must be a multiple of the mesh's batch axes \(data x fsdp = 4\)"):
        generate(model, ids, mask, jax.random.key(0), SamplingConfig(NEW, slots=6), mesh=mesh)
