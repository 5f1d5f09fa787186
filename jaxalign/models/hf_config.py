"""Hugging Face config.json <-> ``ModelConfig``.

Reads both the transformers 5 layout (``rope_parameters``) and the older one
(``rope_theta`` + ``rope_scaling``) that most hub checkpoints still carry, and
writes both so that old and new readers (vLLM included) load the export.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxalign.models.config import ROPE_TYPES, SUPPORTED_MODEL_TYPES, ModelConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def _unsupported(model_type: Any) -> ValueError:
    return ValueError(
        f"unsupported model_type {model_type!r}; jaxalign supports: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def fields_from_hf(config: Mapping[str, Any]) -> dict[str, Any]:
    """``ModelConfig`` keyword arguments for a Hugging Face config dict."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(model_type)
    if model_type == "gpt2":
        return _gpt2_fields(config)
    return _llama_family_fields(config, model_type)


def _rope_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(config.get("rope_parameters") or {})
    legacy_scaling = config.get("rope_scaling") or {}
    if not params:
        params = dict(legacy_scaling)
    theta = params.pop("rope_theta", None) or config.get("rope_theta") or 10000.0
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r} in config.json; supported: {', '.join(ROPE_TYPES)}")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1.0 is not supported")
    params.pop("type", None)
    params.pop("partial_rotary_factor", None)
    scaling = None if rope_type == "default" else {**params, "rope_type": rope_type}
    return {"rope_theta": float(theta), "rope_scaling": scaling}


def _sliding_fields(config: Mapping[str, Any], model_type: str, num_layers: int) -> dict[str, Any]:
    window = config.get("sliding_window")
    if model_type == "mistral":
        return {"sliding_window": window}
    if model_type == "llama" or not config.get("use_sliding_window", False) or window is None:
        return {"sliding_window": None}
    layer_types = config.get("layer_types")
    if layer_types is None:  # older Qwen2 configs: sliding from max_window_layers on
        first = config.get("max_window_layers", num_layers)
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    return {"sliding_window": window, "layer_types": tuple(layer_types)}


def _llama_family_fields(config: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    heads = config["num_attention_heads"]
    layers = config["num_hidden_layers"]
    bias = bool(config.get("attention_bias", False))
    fields = {
        "family": "llama",
        "model_type": model_type,
        "vocab_size": config["vocab_size"],
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "max_position_embeddings": config.get("max_position_embeddings", 2048),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "activation": config.get("hidden_act", "silu"),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attention_bias": model_type == "qwen2" or (model_type != "mistral" and bias),
        "attention_out_bias": model_type in ("llama", "qwen3") and bias,
        "mlp_bias": model_type == "llama" and bool(config.get("mlp_bias", False)),
        "qk_norm": model_type == "qwen3",
        "initializer_range": config.get("initializer_range", 0.02),
        "pad_token_id": config.get("pad_token_id"),
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        **_rope_fields(config),
        **_sliding_fields(config, model_type, layers),
    }
    return fields


def _gpt2_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    for flag, bad in (("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True), ("scale_attn_weights", False)):
        if config.get(flag, not bad) == bad:
            raise ValueError(f"gpt2 config.json: {flag}={bad} is not supported")
    hidden = config["n_embd"]
    return {
        "family": "gpt2",
        "model_type": "gpt2",
        "vocab_size": config["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": config.get("n_inner") or 4 * hidden,
        "num_layers": config["n_layer"],
        "num_heads": config["n_head"],
        "num_kv_heads": config["n_head"],
        "head_dim": hidden // config["n_head"],
        "max_position_embeddings": config.get("n_positions", 1024),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
        "activation": config.get("activation_function", "gelu_new"),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
        "attention_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "initializer_range": config.get("initializer_range", 0.02),
        "pad_token_id": config.get("pad_token_id"),
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
    }


def _token_ids(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_to_hf(cfg: ModelConfig, architectures: list[str] | None = None) -> dict[str, Any]:
    """A config.json dict for ``cfg`` (transformers 4 and 5 both read it)."""
    common = {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": _token_ids(cfg.bos_token_id),
        "eos_token_id": _token_ids(cfg.eos_token_id),
        "torch_dtype": cfg.param_dtype,
        "dtype": cfg.param_dtype,
    }
    if architectures is not None:
        common["architectures"] = list(architectures)
    if cfg.model_type == "gpt2":
        return {**common, **_gpt2_to_hf(cfg)}
    return {**common, **_llama_family_to_hf(cfg)}


def _gpt2_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "n_positions": cfg.max_position_embeddings,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "activation_function": cfg.activation,
    }


def _llama_family_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    _check_exportable(cfg)
    scaling = None
    if cfg.rope_type != "default":  # normalise the legacy "type" key to "rope_type"
        scaling = {**{k: v for k, v in cfg.rope_scaling.items() if k != "type"}, "rope_type": cfg.rope_type}
    fields = {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.activation,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta},
    }
    if cfg.model_type in ("llama", "qwen3"):
        fields["attention_bias"] = cfg.attention_bias
    if cfg.model_type == "llama":
        fields["mlp_bias"] = cfg.mlp_bias
    if cfg.model_type == "mistral":
        fields["sliding_window"] = cfg.sliding_window
    if cfg.model_type in ("qwen2", "qwen3"):
        fields["use_sliding_window"] = cfg.sliding_window is not None
        fields["sliding_window"] = cfg.sliding_window
        sliding = cfg.sliding_window is not None
        fields["layer_types"] = list(cfg.layer_types) if cfg.layer_types else [
            "sliding_attention" if sliding else "full_attention"
        ] * cfg.num_layers
        fields["max_window_layers"] = cfg.num_layers
    return fields


def _check_exportable(cfg: ModelConfig) -> None:
    """Refuses configs the target transformers class cannot express."""
    expected = {
        "llama": dict(qk_norm=False, attention_out_bias=cfg.attention_bias, sliding_window=None),
        "mistral": dict(qk_norm=False, attention_bias=False, attention_out_bias=False, mlp_bias=False),
        "qwen2": dict(qk_norm=False, attention_bias=True, attention_out_bias=False, mlp_bias=False),
        "qwen3": dict(qk_norm=True, attention_out_bias=cfg.attention_bias, mlp_bias=False),
    }[cfg.model_type]
    for field, value in expected.items():
        if getattr(cfg, field) != value:
            raise ValueError(
                f"cannot export to Hugging Face model_type {cfg.model_type!r}: it needs {field}={value!r}, "
                f"the config has {getattr(cfg, field)!r}"
            )
