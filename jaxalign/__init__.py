"""jaxalign: align language models with human preferences in JAX/Flax."""

__version__ = "0.1.0"
