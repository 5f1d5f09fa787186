"""``ModelConfig``: the architecture of a decoder, and its Hugging Face config.json mapping.

One dataclass describes every supported family. ``family`` picks the block
layout ("llama": RMSNorm + RoPE + gated MLP, used by Llama, Mistral, Qwen2,
Qwen3; "gpt2": LayerNorm + learned positions + plain MLP); ``model_type``
remembers which Hugging Face class to export to.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
ROPE_TYPES = ("default", "linear", "llama3")
ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
# jaxalign.models.attention_backends; "auto" picks by platform and dtype.
ATTENTION_BACKENDS = ("auto", "xla", "tiled", "cudnn", "pallas")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder-only transformer.

    ``rms_norm_eps`` is used by the llama family, ``layer_norm_eps`` by gpt2.
    ``attention_bias`` adds q/k/v biases; ``attention_out_bias`` the output
    projection's bias (Llama and Qwen3 set both from one flag, Qwen2 only the
    first). ``sliding_window`` (Mistral) limits attention to the last
    ``sliding_window`` positions; with ``layer_types`` (Qwen2/3) only the
    layers marked "sliding_attention" use it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None  # None -> num_heads (no GQA)
    head_dim: int | None = None  # None -> hidden_size // num_heads
    family: str = "llama"
    model_type: str = "llama"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None  # {"rope_type": "llama3"|"linear", "factor": ..., ...}
    rms_norm_eps: float = 1e-6
    layer_norm_eps: float = 1e-5
    activation: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: str = "none"  # "none" | "full" | "dots" (keep weight-matmul outputs)
    attention: str = "auto"  # one of ATTENTION_BACKENDS (jaxalign.models.attention_backends)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.bos_token_id, list):
            object.__setattr__(self, "bos_token_id", tuple(self.bos_token_id))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self._validate()

    def _validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig: {message}")

        check(self.family in ("llama", "gpt2"), f"family must be 'llama' or 'gpt2', got {self.family!r}")
        check(self.model_type in SUPPORTED_MODEL_TYPES, f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {self.model_type!r}")
        check(self.num_heads % self.num_kv_heads == 0, f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        check(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        check(self.remat in REMAT_POLICIES, f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        check(self.attention in ATTENTION_BACKENDS, f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        check(self.param_dtype in DTYPES, f"param_dtype must be one of {DTYPES}, got {self.param_dtype!r}")
        rope_type = self.rope_type
        check(rope_type in ROPE_TYPES, f"rope_scaling rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
        missing = [k for k in ROPE_KEYS[rope_type] if k not in (self.rope_scaling or {})]
        check(not missing, f"rope_scaling of type {rope_type!r} needs {missing}")
        if self.layer_types is not None:
            check(len(self.layer_types) == self.num_layers, f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.family == "gpt2":
            check(self.head_dim * self.num_heads == self.hidden_size, "gpt2 needs head_dim * num_heads == hidden_size")
            check(self.num_kv_heads == self.num_heads, "gpt2 has no grouped-query attention")

    def __hash__(self) -> int:  # rope_scaling is a dict; hash the JSON form so the config can be static
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))

    @property
    def rope_type(self) -> str:
        scaling = self.rope_scaling or {}
        return scaling.get("rope_type", scaling.get("type", "default"))

    @property
    def norm_eps(self) -> float:
        return self.layer_norm_eps if self.family == "gpt2" else self.rms_norm_eps

    def uses_sliding_window(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding_attention"

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Builds a config from a Hugging Face config.json dict.

        ``overrides`` (e.g. ``dtype="bfloat16"``, ``remat="full"``) replace
        fields; None values are ignored.
        """
        from jaxalign.models import hf_config  # local import: hf_config imports this module

        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**hf_config.fields_from_hf(config), **overrides})

    def to_hf(self, architectures: list[str] | None = None) -> dict[str, Any]:
        """A config.json dict that transformers loads (``architectures`` optional)."""
        from jaxalign.models import hf_config

        return hf_config.config_to_hf(self, architectures)
