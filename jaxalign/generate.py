"""The sampler's entry point under the name DESIGN.md gives it; the code lives in ``jaxalign.generation``."""

from jaxalign.generation import Generation, SamplingConfig, generate

__all__ = ["Generation", "SamplingConfig", "generate"]
