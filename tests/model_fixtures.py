"""Tiny random transformers checkpoints and torch references for the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

VOCAB = 128

# name -> (config class, causal-LM class, config kwargs)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_rope_tied": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(
            num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=16),
        ),
    ),
    "llama_linear_rope": (
        "LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False, rope_scaling=dict(rope_type="linear", factor=4.0))
    ),
    "mistral_sliding": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=4)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
    "qwen3_bias_tied": (
        "Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=1, head_dim=8, attention_bias=True, tie_word_embeddings=True)
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(tie_word_embeddings=True)),
    "gpt2_untied": ("GPT2Config", "GPT2LMHeadModel", dict(tie_word_embeddings=False)),
}


def hf_config(arch: str, **extra) -> transformers.PretrainedConfig:
    config_cls, _, kwargs = ARCHS[arch]
    if config_cls == "GPT2Config":
        base = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    else:
        base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64)
    return getattr(transformers, config_cls)(**{**base, **kwargs, **extra})


def randomize_small_params(model: torch.nn.Module, seed: int) -> None:
    """Random norms/biases too (HF inits them to 1/0, which would hide layout bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))


def make_causal_lm(arch: str, folder: Path, seed: int = 0, **extra) -> torch.nn.Module:
    """Random HF causal LM saved to ``folder``; returns the torch model in eval mode."""
    torch.manual_seed(seed)
    _, model_cls, _ = ARCHS[arch]
    model = getattr(transformers, model_cls)(hf_config(arch, **extra)).eval()
    randomize_small_params(model, seed)
    model.save_pretrained(folder)
    return model


def padded_batch(padding: str, batch: int = 3, length: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """input_ids, attention_mask ``[batch, length]``; rows have different real lengths."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, VOCAB, size=(batch, length)).astype(np.int64)
    mask = np.ones((batch, length), np.int64)
    if padding != "none":
        for row, real in enumerate(range(length, length - 3 * batch, -3)):
            pad = length - real
            if padding == "left":
                mask[row, :pad] = 0
            else:
                mask[row, real:] = 0
        ids = ids * mask  # pad id 0
    return ids, mask


def positions_of(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def torch_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions_of(mask)),
        )
    return out.logits.float().numpy()


def torch_next_token_logps(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``[b, seq - 1]`` log p(ids[t + 1] | ...) from torch logits."""
    logps = torch.log_softmax(torch.tensor(logits[:, :-1]), dim=-1)
    return torch.gather(logps, -1, torch.tensor(ids[:, 1:, None])).squeeze(-1).numpy()
