"""Flax NNX decoders (Llama/Mistral/Qwen2/Qwen3/GPT-2), heads, log-probs and Hugging Face I/O."""

from jaxalign.models.config import ModelConfig
from jaxalign.models.heads import ScoreModel
from jaxalign.models.hf import load_pretrained
from jaxalign.models.hf_export import save_pretrained
from jaxalign.models.init import init_model
from jaxalign.models.logps import logps_from_hidden, sequence_token_logps, token_logps
from jaxalign.models.partition import shard_model, state_shardings
from jaxalign.models.transformer import CausalLM, layout_from_attention_mask

__all__ = [
    "CausalLM",
    "ModelConfig",
    "ScoreModel",
    "init_model",
    "layout_from_attention_mask",
    "load_pretrained",
    "logps_from_hidden",
    "save_pretrained",
    "sequence_token_logps",
    "shard_model",
    "state_shardings",
    "token_logps",
]
