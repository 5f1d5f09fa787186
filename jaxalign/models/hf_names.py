"""Hugging Face tensor names and layouts <-> NNX parameter paths.

A ``TensorMap`` ties one checkpoint tensor to the parameter(s) it fills, with
the two layout conversions. Conversions return numpy *views* where they can
(transpose, reshape), so the loader copies each tensor at most once, per
shard. Layout notes:

- torch ``nn.Linear`` stores ``[out, in]``; our kernels are ``[*in, *out]``
  with heads split out (q: ``[embed, heads, head_dim]``).
- GPT-2's ``Conv1D`` stores ``[in, out]`` and fuses q/k/v in ``c_attn``,
  which is split into our ``q_proj``/``k_proj``/``v_proj`` at load.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import numpy as np

from jaxalign.models.config import ModelConfig

Path = tuple[str | int, ...]

ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
    "mistral": ("MistralForCausalLM", "MistralForSequenceClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"),
    "gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification"),
}

# Buffers and duplicates transformers writes that carry no parameters of ours.
_HARMLESS = (
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
    re.compile(r"(^|\.)attn\.(bias|masked_bias)$"),  # GPT-2 causal-mask buffers
)


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One checkpoint tensor ``hf_name`` ``hf_shape`` <-> parameters at ``paths``."""

    hf_name: str
    hf_shape: tuple[int, ...]
    paths: tuple[Path, ...]
    to_params: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def architecture(cfg: ModelConfig, head: str) -> str:
    causal, score = ARCHITECTURES[cfg.model_type]
    return score if head == "score" else causal


def is_harmless_extra(name: str) -> bool:
    return any(p.search(name) for p in _HARMLESS)


def _copy(name: str, path: Path, shape: Sequence[int]) -> TensorMap:
    return TensorMap(name, tuple(shape), (path,), lambda w: (w,), lambda p: p)


def _torch_linear(name: str, path: Path, in_shape: Sequence[int], out_shape: Sequence[int]) -> TensorMap:
    """torch ``[out_flat, in_flat]`` <-> kernel ``[*in, *out]``."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(
        name, (n_out, n_in), (path,),
        lambda w: (w.T.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out).T,
    )


def _conv1d(name: str, path: Path, in_shape: Sequence[int], out_shape: Sequence[int]) -> TensorMap:
    """GPT-2 Conv1D ``[in_flat, out_flat]`` <-> kernel ``[*in, *out]``."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(
        name, (n_in, n_out), (path,),
        lambda w: (w.reshape(*in_shape, *out_shape),),
        lambda k: k.reshape(n_in, n_out),
    )


def _flat_bias(name: str, path: Path, shape: Sequence[int]) -> TensorMap:
    size = math.prod(shape)
    return TensorMap(name, (size,), (path,), lambda b: (b.reshape(*shape),), lambda b: b.reshape(size))


def _fused_qkv(name: str, paths: tuple[Path, Path, Path], cfg: ModelConfig, is_bias: bool) -> TensorMap:
    """GPT-2 ``c_attn`` ``[embed, 3 * embed]`` (or bias ``[3 * embed]``) <-> q/k/v ``[embed, heads, head_dim]``."""
    e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    lead = () if is_bias else (e,)

    def split(w: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(part.reshape(*lead, h, d) for part in np.split(w, 3, axis=-1))

    def fuse(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.concatenate([x.reshape(*lead, h * d) for x in (q, k, v)], axis=-1)

    return TensorMap(name, (*lead, 3 * h * d), paths, split, fuse)


def _llama_layer(cfg: ModelConfig, hf: str, ours: Path) -> list[TensorMap]:
    e, h, kv, d, m = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    attn, mlp = ours + ("self_attn",), ours + ("mlp",)
    maps = [
        _copy(f"{hf}.input_layernorm.weight", ours + ("input_layernorm", "scale"), (e,)),
        _copy(f"{hf}.post_attention_layernorm.weight", ours + ("post_attention_layernorm", "scale"), (e,)),
        _torch_linear(f"{hf}.self_attn.q_proj.weight", attn + ("q_proj", "kernel"), (e,), (h, d)),
        _torch_linear(f"{hf}.self_attn.k_proj.weight", attn + ("k_proj", "kernel"), (e,), (kv, d)),
        _torch_linear(f"{hf}.self_attn.v_proj.weight", attn + ("v_proj", "kernel"), (e,), (kv, d)),
        _torch_linear(f"{hf}.self_attn.o_proj.weight", attn + ("o_proj", "kernel"), (h, d), (e,)),
        _torch_linear(f"{hf}.mlp.gate_proj.weight", mlp + ("gate_proj", "kernel"), (e,), (m,)),
        _torch_linear(f"{hf}.mlp.up_proj.weight", mlp + ("up_proj", "kernel"), (e,), (m,)),
        _torch_linear(f"{hf}.mlp.down_proj.weight", mlp + ("down_proj", "kernel"), (m,), (e,)),
    ]
    if cfg.attention_bias:
        for proj, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            maps.append(_flat_bias(f"{hf}.self_attn.{proj}.bias", attn + (proj, "bias"), (heads, d)))
    if cfg.attention_out_bias:
        maps.append(_copy(f"{hf}.self_attn.o_proj.bias", attn + ("o_proj", "bias"), (e,)))
    if cfg.mlp_bias:
        for proj, size in (("gate_proj", m), ("up_proj", m), ("down_proj", e)):
            maps.append(_copy(f"{hf}.mlp.{proj}.bias", mlp + (proj, "bias"), (size,)))
    if cfg.qk_norm:
        maps.append(_copy(f"{hf}.self_attn.q_norm.weight", attn + ("q_norm", "scale"), (d,)))
        maps.append(_copy(f"{hf}.self_attn.k_norm.weight", attn + ("k_norm", "scale"), (d,)))
    return maps


def _gpt2_layer(cfg: ModelConfig, hf: str, ours: Path) -> list[TensorMap]:
    e, h, d, m = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    attn, mlp = ours + ("self_attn",), ours + ("mlp",)
    qkv = tuple(attn + (p,) for p in ("q_proj", "k_proj", "v_proj"))
    return [
        _copy(f"{hf}.ln_1.weight", ours + ("input_layernorm", "scale"), (e,)),
        _copy(f"{hf}.ln_1.bias", ours + ("input_layernorm", "bias"), (e,)),
        _fused_qkv(f"{hf}.attn.c_attn.weight", tuple(p + ("kernel",) for p in qkv), cfg, is_bias=False),
        _fused_qkv(f"{hf}.attn.c_attn.bias", tuple(p + ("bias",) for p in qkv), cfg, is_bias=True),
        _conv1d(f"{hf}.attn.c_proj.weight", attn + ("o_proj", "kernel"), (h, d), (e,)),
        _copy(f"{hf}.attn.c_proj.bias", attn + ("o_proj", "bias"), (e,)),
        _copy(f"{hf}.ln_2.weight", ours + ("post_attention_layernorm", "scale"), (e,)),
        _copy(f"{hf}.ln_2.bias", ours + ("post_attention_layernorm", "bias"), (e,)),
        _conv1d(f"{hf}.mlp.c_fc.weight", mlp + ("up_proj", "kernel"), (e,), (m,)),
        _copy(f"{hf}.mlp.c_fc.bias", mlp + ("up_proj", "bias"), (m,)),
        _conv1d(f"{hf}.mlp.c_proj.weight", mlp + ("down_proj", "kernel"), (m,), (e,)),
        _copy(f"{hf}.mlp.c_proj.bias", mlp + ("down_proj", "bias"), (e,)),
    ]


def base_prefix(cfg: ModelConfig) -> str:
    """Prefix of the decoder's tensors in ``*ForCausalLM`` / ``*ForSequenceClassification`` checkpoints."""
    return "transformer." if cfg.family == "gpt2" else "model."


def decoder_maps(cfg: ModelConfig, prefix: str) -> list[TensorMap]:
    """Maps of the decoder (embeddings, layers, final norm); ``prefix`` e.g. ``"model."`` or ``""``."""
    e, v = cfg.hidden_size, cfg.vocab_size
    ours: Path = ("model",)
    if cfg.family == "gpt2":
        maps = [
            _copy(f"{prefix}wte.weight", ours + ("embed_tokens", "embedding"), (v, e)),
            _copy(f"{prefix}wpe.weight", ours + ("embed_positions", "embedding"), (cfg.max_position_embeddings, e)),
            _copy(f"{prefix}ln_f.weight", ours + ("norm", "scale"), (e,)),
            _copy(f"{prefix}ln_f.bias", ours + ("norm", "bias"), (e,)),
        ]
        for i in range(cfg.num_layers):
            maps += _gpt2_layer(cfg, f"{prefix}h.{i}", ours + ("layers", i))
        return maps
    maps = [
        _copy(f"{prefix}embed_tokens.weight", ours + ("embed_tokens", "embedding"), (v, e)),
        _copy(f"{prefix}norm.weight", ours + ("norm", "scale"), (e,)),
    ]
    for i in range(cfg.num_layers):
        maps += _llama_layer(cfg, f"{prefix}layers.{i}", ours + ("layers", i))
    return maps


def head_maps(cfg: ModelConfig, head: str) -> list[TensorMap]:
    """Maps of the output head: ``lm_head`` (untied causal LM only) or ``score``."""
    e = cfg.hidden_size
    if head == "score":
        return [_torch_linear("score.weight", ("score", "kernel"), (e,), (1,))]
    if cfg.tie_word_embeddings:
        return []
    return [_torch_linear("lm_head.weight", ("lm_head", "kernel"), (e,), (cfg.vocab_size,))]


def tensor_maps(cfg: ModelConfig, head: str, prefix: str | None = None) -> list[TensorMap]:
    """Every tensor of a ``head`` ("causal_lm" | "score") model, in checkpoint order."""
    prefix = base_prefix(cfg) if prefix is None else prefix
    return decoder_maps(cfg, prefix) + head_maps(cfg, head)
