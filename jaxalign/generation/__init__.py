"""Sampling from a ``CausalLM``: prefill + ``lax.while_loop`` decode over a KV cache (see docs/generation.md)."""

from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.sampler import Generation, generate, stop_token_ids
from jaxalign.generation.sampling import policy_logps, sample_tokens

__all__ = ["Generation", "SamplingConfig", "generate", "policy_logps", "sample_tokens", "stop_token_ids"]
