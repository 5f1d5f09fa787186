"""jaxalign: align language models with human preferences in JAX/Flax."""

from jaxalign.lazy_exports import lazy_exports

__version__ = "0.1.0"

# Loaded on first use, so that importing the package (the ``jaxalign`` command starts by
# importing ``jaxalign.cli``) does not import jax before jaxalign.host_malloc can restart it.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "jaxalign.losses": ["register_loss"],  # lets a user write @jaxalign.register_loss("name")
    "jaxalign.algos.registry": ["Algorithm", "register_algorithm"],  # user algorithms subclass Algorithm
})
