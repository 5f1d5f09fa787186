"""jaxalign: align language models with human preferences in JAX/Flax."""

from typing import TYPE_CHECKING

from jaxalign.lazy_exports import lazy_exports

__version__ = "0.1.0"

# Loaded on first use, so that importing the package (the ``jaxalign`` command starts by
# importing ``jaxalign.cli``) does not import jax before jaxalign.host_malloc can restart it.
if TYPE_CHECKING:  # the exports (jaxalign.lazy_exports)
    from jaxalign.algos.registry import Algorithm, register_algorithm  # user algorithms subclass Algorithm
    from jaxalign.losses import register_loss  # @jaxalign.register_loss("name")

__all__ = ["Algorithm", "register_algorithm", "register_loss"]
__getattr__, __dir__ = lazy_exports(__name__, __file__)
