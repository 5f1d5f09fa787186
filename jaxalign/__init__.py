"""jaxalign: align language models with human preferences in JAX/Flax."""

__version__ = "0.1.0"
from jaxalign.losses import register_loss  # noqa: E402  lets a user write @jaxalign.register_loss("name")
from jaxalign.algos.registry import Algorithm, register_algorithm  # noqa: E402  user algorithms subclass Algorithm
