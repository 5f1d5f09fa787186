"""ScoreModel (reward / value head) matches transformers *ForSequenceClassification and round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxalign.models import CausalLM, ScoreModel, load_pretrained, save_pretrained
from model_fixtures import ARCHS, hf_config, make_causal_lm, positions_of, randomize_small_params

SCORE_CLASSES = {
    "llama": "LlamaForSequenceClassification",
    "qwen2_tied": "Qwen2ForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}


def _mixed_padding_batch():
    """Rows: no padding, right padding, left padding (pad id 0)."""
    rng = np.random.RandomState(5)
    ids = rng.randint(1, 128, size=(3, 10))
    mask = np.ones((3, 10), np.int64)
    mask[1, 7:] = 0
    mask[2, :4] = 0
    return ids * mask, mask


def _last_real(mask):
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)


@jax.jit
def _scores(model, ids, mask):
    return model(ids, attention_mask=mask)


def _torch_scores(model, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions_of(mask))
        )
    return out.logits[:, 0].numpy()


@pytest.mark.parametrize("arch", sorted(SCORE_CLASSES))
def test_score_matches_sequence_classification(arch, tmp_path):
    torch.manual_seed(0)
    hf_model = getattr(transformers, SCORE_CLASSES[arch])(hf_config(arch, num_labels=1, pad_token_id=0)).eval()
    randomize_small_params(hf_model, 0)
    hf_model.save_pretrained(tmp_path)

    model = load_pretrained(tmp_path)  # head="auto" -> ScoreModel from `architectures`
    assert isinstance(model, ScoreModel)
    ids, mask = _mixed_padding_batch()
    scores = np.asarray(_scores(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert scores.shape == ids.shape and scores.dtype == np.float32
    expected = _torch_scores(hf_model, ids, mask)
    np.testing.assert_allclose(scores[np.arange(3), _last_real(mask)], expected, atol=1e-4)

    # The packed form the trainer calls positionally gives the same per-position scores.
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    packed = np.asarray(jax.jit(lambda m, *a: m(*a))(model, ids, positions, mask, np.zeros_like(mask)))
    np.testing.assert_allclose(packed[mask == 1], scores[mask == 1], atol=1e-6)


def test_reward_model_from_sft_checkpoint(tmp_path):
    """head="score" on a causal LM: same decoder, a fresh seeded score head; exports as *ForSequenceClassification."""
    make_causal_lm("llama", tmp_path / "sft", pad_token_id=0)
    causal = load_pretrained(tmp_path / "sft")
    reward = load_pretrained(tmp_path / "sft", head="score", seed=3)
    assert isinstance(causal, CausalLM) and isinstance(reward, ScoreModel)

    ids, mask = _mixed_padding_batch()
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    hidden = jax.jit(lambda m: m.hidden_states(ids, positions, mask))
    np.testing.assert_array_equal(np.asarray(hidden(reward)), np.asarray(hidden(causal)))

    kernel = np.asarray(reward.score.kernel[...])
    assert kernel.shape == (32, 1)
    assert 0.005 < kernel.std() < 0.05  # normal(initializer_range=0.02)
    np.testing.assert_array_equal(kernel, np.asarray(load_pretrained(tmp_path / "sft", head="score", seed=3).score.kernel[...]))
    assert not np.allclose(kernel, np.asarray(load_pretrained(tmp_path / "sft", head="score", seed=4).score.kernel[...]))

    save_pretrained(reward, tmp_path / "rm")
    hf_reward = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(hf_reward).__name__ == "LlamaForSequenceClassification"
    scores = np.asarray(_scores(reward, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(scores[np.arange(3), _last_real(mask)], _torch_scores(hf_reward, ids, mask), atol=1e-5)
    assert isinstance(load_pretrained(tmp_path / "rm"), ScoreModel)


def test_causal_lm_from_reward_checkpoint_with_tied_embeddings(tmp_path):
    """head="causal_lm" on a classifier drops score.weight (allowed when the LM head is tied)."""
    assert ARCHS["qwen2_tied"][2]["tie_word_embeddings"]
    torch.manual_seed(0)
    transformers.Qwen2ForSequenceClassification(hf_config("qwen2_tied", num_labels=1, pad_token_id=0)).save_pretrained(tmp_path)
    assert isinstance(load_pretrained(tmp_path, head="causal_lm"), CausalLM)
