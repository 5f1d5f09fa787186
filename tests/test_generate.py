"""The sampler on tiny random checkpoints: transformers parity, truncation, log-probs, stopping, meshes, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxalign.generation import SamplingConfig, generate, stop_token_ids
from jaxalign.models import load_pretrained
from jaxalign.sharding import MeshConfig, make_mesh
from model_fixtures import make_causal_lm, padded_batch

NEW = 10


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_causal_lm("llama", folder)
    return folder, load_pretrained(folder)


def prompts(batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts of lengths 9, 6, 3 (, ...)."""
    return padded_batch("left", batch=batch, length=9)


def hf_greedy(torch_model, ids, mask, new: int, eos: int | None) -> np.ndarray:
    """transformers' greedy continuation ``[b, new]``, padded with 0 after an early stop."""
    with torch.no_grad():
        out = torch_model.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new,
            do_sample=False, eos_token_id=eos, pad_token_id=0,
        )
    tokens = out[:, ids.shape[1]:].numpy()
    return np.pad(tokens, ((0, 0), (0, new - tokens.shape[1])))


def first_stop_lengths(tokens: np.ndarray, stops) -> np.ndarray:
    """Completion length per row: up to and including the first stop token (else all)."""
    hit = np.isin(tokens, list(stops))
    return np.where(hit.any(-1), hit.argmax(-1) + 1, tokens.shape[1])


@jax.jit
def _forward(model, ids, mask):
    return model(ids, mask)


def fresh_logits(model, ids, mask, generation) -> np.ndarray:
    """Uncached forward over prompt + completion: ``[b, new, vocab]`` logits that predict each generated token."""
    full = jnp.concatenate([jnp.asarray(ids), generation.tokens], axis=1)
    full_mask = jnp.concatenate([jnp.asarray(mask), generation.mask], axis=1)
    return np.asarray(_forward(model, full, full_mask)[:, ids.shape[1] - 1:-1])


def picked(values: np.ndarray, tokens) -> np.ndarray:
    return np.take_along_axis(values, np.asarray(tokens)[..., None], -1)[..., 0]


def log_softmax(x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.nn.log_softmax(jnp.asarray(x), -1))


# Random tied embeddings make greedy repeat the last prompt token, and GPT-2's default init settles
# on one or two tokens; these variants give varied continuations, which test more.
@pytest.mark.parametrize("arch, extra", [
    ("llama", {}),
    ("qwen2_tied", dict(tie_word_embeddings=False)),
    ("gpt2_untied", dict(initializer_range=0.2, bos_token_id=1, eos_token_id=2)),
    ("mistral_sliding", {}),  # window 4: the cache's sliding mask
])
def test_greedy_matches_transformers_generate(arch, extra, tmp_path):
    torch_model = make_causal_lm(arch, tmp_path, **extra)
    model = load_pretrained(tmp_path)
    ids, mask = prompts()
    free_running = hf_greedy(torch_model, ids, mask, NEW, eos=None)
    assert len(np.unique(free_running)) > NEW, "degenerate continuation: the comparison would test little"
    eos = int(free_running[1, 4])  # row 1 stops by step 4; the others when (if) they emit it
    expected = hf_greedy(torch_model, ids, mask, NEW, eos=eos)

    cfg = SamplingConfig(NEW, temperature=0.0, stop_token_ids=(eos,), stop_at_eos=False)
    out = generate(model, ids, mask, jax.random.key(0), cfg)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    lengths = first_stop_lengths(free_running, [eos])
    np.testing.assert_array_equal(np.asarray(out.lengths), lengths)
    np.testing.assert_array_equal(np.asarray(out.mask), np.arange(NEW)[None] < lengths[:, None])


def test_top_k_and_log_probs_match_a_fresh_forward(llama):
    folder, model = llama
    ids, mask = prompts()
    cfg = SamplingConfig(NEW, temperature=2.0, top_k=3, stop_at_eos=False)
    out = generate(model, ids, mask, jax.random.key(1), cfg)
    logits = fresh_logits(model, ids, mask, out)
    tokens = np.asarray(out.tokens)
    third_largest = np.sort(logits, -1)[..., -3]
    assert (picked(logits, tokens) >= third_largest - 1e-5).all()
    assert len(np.unique(tokens)) > 3  # actually sampled, not stuck on one token

    np.testing.assert_allclose(np.asarray(out.logps), picked(log_softmax(logits), tokens), atol=1e-5)
    top3 = np.sort(logits / 2.0, -1)[..., -3:]
    sampled_from = picked(logits / 2.0, tokens) - np.log(np.exp(top3).sum(-1))
    np.testing.assert_allclose(np.asarray(out.sampling_logps), sampled_from, atol=1e-5)

    # A pure function of (state, prompts, rng): the same under an outer jit, from the split model.
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, ids, mask, key: generate((graphdef, state), ids, mask, key, cfg))
    again = jitted(state, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(again.tokens), tokens)


def test_top_p_never_leaves_the_nucleus(llama):
    """At 0.8 the tiny model's nucleus (~100 of 128 tokens) takes the threshold search; the
    top-64-candidates path is checked exactly in test_generate_sampling."""
    _, model = llama
    top_p = 0.8
    ids, mask = prompts()
    out = generate(model, ids, mask, jax.random.key(2), SamplingConfig(NEW, top_p=top_p, stop_at_eos=False))
    logits = fresh_logits(model, ids, mask, out)
    probs = np.exp(log_softmax(logits))
    tokens = np.asarray(out.tokens)
    mass_before = np.where(probs > picked(probs, tokens)[..., None] + 1e-6, probs, 0.0).sum(-1)
    assert (mass_before < top_p + 1e-5).all()
    np.testing.assert_allclose(np.asarray(out.logps), picked(log_softmax(logits), tokens), atol=1e-5)


def test_stops_early_at_stop_tokens_and_eos(llama):
    _, model = llama
    ids, mask = prompts(batch=4)
    mask[3], ids[3] = 0, 0  # a padding row: no prompt, no tokens, never holds the loop up
    greedy = SamplingConfig(NEW, temperature=0.0, stop_at_eos=False)
    free_running = np.asarray(generate(model, ids, mask, jax.random.key(0), greedy).tokens)
    extra_stop, eos = int(free_running[0, 1]), int(free_running[1, 2])
    stops = [extra_stop, eos]
    lengths = first_stop_lengths(free_running[:3], stops)
    assert lengths.max() < NEW
    assert (lengths != first_stop_lengths(free_running[:3], [extra_stop])).any(), "the model's EOS must matter here"

    model = nnx.merge(*nnx.split(model))  # a copy (same arrays), so the shared fixture keeps its config
    model.config = model.config.replace(eos_token_id=eos)  # the graphdef (static) carries it
    cfg = SamplingConfig(NEW, temperature=0.0, stop_token_ids=(extra_stop,), pad_token_id=7)
    assert stop_token_ids(cfg, eos) == tuple(sorted({extra_stop, eos}))
    out = generate(model, ids, mask, jax.random.key(0), cfg)
    np.testing.assert_array_equal(np.asarray(out.lengths), [*lengths, 0])
    assert int(out.steps) == lengths.max()  # the loop ran only until every row had stopped
    tokens, out_mask = np.asarray(out.tokens), np.asarray(out.mask).astype(bool)
    np.testing.assert_array_equal(tokens[out_mask], free_running[out_mask])
    assert (tokens[~out_mask] == 7).all()
    assert (np.asarray(out.logps)[~out_mask] == 0).all() and (np.asarray(out.logps)[out_mask] < 0).all()


def test_sharded_generation_equals_single_device(llama):
    folder, single = llama
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = load_pretrained(folder, mesh=mesh)
    ids, mask = prompts(batch=4)
    cfg = SamplingConfig(NEW, top_k=5, stop_at_eos=False)
    expected = generate(single, ids, mask, jax.random.key(3), cfg)
    got = generate(sharded, ids, mask, jax.random.key(3), cfg, mesh=mesh)
    assert got.tokens.addressable_shards[0].data.shape == (1, NEW)  # rows split over data x fsdp = 4
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_allclose(np.asarray(got.logps), np.asarray(expected.logps), atol=1e-5)


def test_rejects_bad_prompts_and_models(llama, tmp_path):
    _, model = llama
    ids, mask = prompts()
    with pytest.raises(ValueError, match="batch, length"):
        generate(model, ids[0], mask[0], jax.random.key(0), SamplingConfig(4))
    make_causal_lm("gpt2", tmp_path)  # 64 learned positions
    gpt2 = load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="learned positions"):
        generate(gpt2, ids, mask, jax.random.key(0), SamplingConfig(60))
    with pytest.raises(TypeError, match="CausalLM"):
        generate(load_pretrained(tmp_path, head="score"), ids, mask, jax.random.key(0), SamplingConfig(4))


@pytest.mark.parametrize("arch", ["llama", "mistral_sliding", "gpt2_untied"])
def test_the_one_forward_with_a_cache_equals_it_without(arch, tmp_path):
    """Prefill a left-padded chunk, then feed tokens one and two at a time through the same
    ``CausalLM.__call__`` with a KV cache: the logits equal one uncached forward over everything."""
    from jaxalign.models.kv_cache import init_kv_cache

    make_causal_lm(arch, tmp_path)
    model = load_pretrained(tmp_path)
    ids, mask = prompts()
    more = np.random.RandomState(1).randint(1, 100, size=(ids.shape[0], 3))
    full_ids = np.concatenate([ids, more], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(more)], axis=1)
    expected = np.asarray(_forward(model, full_ids, full_mask))

    cache = init_kv_cache(model.config, ids.shape[0], full_ids.shape[1])
    got = []
    for start, stop in [(0, ids.shape[1]), (ids.shape[1], ids.shape[1] + 1), (ids.shape[1] + 1, full_ids.shape[1])]:
        logits, cache = model(jnp.asarray(full_ids[:, start:stop]), jnp.asarray(full_mask[:, start:stop]), cache=cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    real = full_mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=2e-5)
    assert int(cache.index) == full_ids.shape[1]


def test_num_samples_share_each_prompts_prefill(llama):
    """Rows p*n .. p*n+n-1 continue prompt p: greedy, each equals the one-sample continuation;
    sampled, they differ from each other and their log-probs are a fresh forward's."""
    _, model = llama
    ids, mask = prompts()
    greedy = SamplingConfig(NEW, temperature=0.0, stop_at_eos=False)
    one = np.asarray(generate(model, ids, mask, jax.random.key(0), greedy).tokens)
    three = np.asarray(generate(model, ids, mask, jax.random.key(0), greedy, num_samples=3).tokens)
    np.testing.assert_array_equal(three, np.repeat(one, 3, axis=0))

    cfg = SamplingConfig(NEW, temperature=1.5, stop_at_eos=False)
    out = generate(model, ids, mask, jax.random.key(4), cfg, num_samples=4)
    assert out.tokens.shape == (4 * ids.shape[0], NEW)
    groups = np.asarray(out.tokens).reshape(ids.shape[0], 4, NEW)
    assert all(len({tuple(row) for row in group}) == 4 for group in groups)
    logits = fresh_logits(model, np.repeat(ids, 4, axis=0), np.repeat(mask, 4, axis=0), out)
    np.testing.assert_allclose(np.asarray(out.logps), picked(log_softmax(logits), np.asarray(out.tokens)), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, ids, mask, jax.random.key(0), cfg, num_samples=0)


PREFIX = np.array([5, 17, 3, 29, 8], np.int32)
GREEDY = SamplingConfig(NEW, temperature=0.0, stop_at_eos=False)


def _greedy_from_joined_prompts(model, ids, mask):
    """Greedy continuations of PREFIX + each prompt, joined and left-padded again (padding moved to the front)."""
    joined = np.concatenate([np.repeat(PREFIX[None], len(ids), 0), ids], axis=1)
    joined_mask = np.concatenate([np.ones((len(ids), len(PREFIX)), np.int32), mask], axis=1)
    order = np.argsort(joined_mask, axis=1, kind="stable")
    joined, joined_mask = np.take_along_axis(joined, order, 1), np.take_along_axis(joined_mask, order, 1)
    return generate(model, joined, joined_mask, jax.random.key(0), GREEDY)


def test_shared_prefix_is_prefilled_once_and_continued_by_every_prompt(llama):
    """prefix_ids + left-padded prompts give what the joined prompts give (greedy tokens and log-probs)."""
    _, model = llama
    ids, mask = prompts()
    expected = _greedy_from_joined_prompts(model, ids, mask)
    got = generate(model, ids, mask, jax.random.key(0), GREEDY, prefix_ids=PREFIX)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
    np.testing.assert_allclose(np.asarray(got.logps), np.asarray(expected.logps), atol=2e-5)


@pytest.mark.slow
def test_shared_prefix_with_num_samples_padding_rows_and_a_mesh(llama):
    """With num_samples and on a mesh (padding rows included) the prefix rows still match the joined prompts."""
    folder, model = llama
    ids, mask = prompts()
    expected = _greedy_from_joined_prompts(model, ids, mask)
    two = generate(model, ids, mask, jax.random.key(0), GREEDY, prefix_ids=PREFIX, num_samples=2)
    np.testing.assert_array_equal(np.asarray(two.tokens), np.repeat(np.asarray(expected.tokens), 2, axis=0))

    padded_ids = np.concatenate([ids, np.zeros_like(ids[:1])])
    padded_mask = np.concatenate([mask, np.zeros_like(mask[:1])])
    mesh = make_mesh(MeshConfig(data=-1))
    rows = np.resize(np.arange(4), 8)
    on_mesh = generate(load_pretrained(folder, mesh=mesh), padded_ids[rows], padded_mask[rows], jax.random.key(0), GREEDY, prefix_ids=PREFIX, mesh=mesh)
    lengths = np.asarray(on_mesh.lengths)
    assert lengths[3] == 0 and lengths[7] == 0
    np.testing.assert_array_equal(np.asarray(on_mesh.tokens)[:3], np.asarray(expected.tokens))
