"""jaxalign: align language models with human preferences in JAX/Flax."""

__version__ = "0.1.0"

# Loaded on first use, so that importing the package (the ``jaxalign`` command starts by
# importing ``jaxalign.cli``) does not import jax before jaxalign.host_malloc can restart it.
_LAZY = {
    "register_loss": "jaxalign.losses",  # lets a user write @jaxalign.register_loss("name")
    "Algorithm": "jaxalign.algos.registry",  # user algorithms subclass Algorithm
    "register_algorithm": "jaxalign.algos.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxalign' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
