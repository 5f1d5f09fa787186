"""A package's public names, imported from their modules on first use (PEP 562).

Why: the ``jaxalign`` command builds its whole argument parser from every
subcommand's module, and a package ``__init__`` that imports its implementation
made ``jaxalign --help``, ``jaxalign dashboard`` and ``jaxalign data stats`` import
jax, transformers and Grain first (1.4 s before any output). Hand-written rather
than the ``lazy_loader`` package: it is the few lines below.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``exports`` maps a module
    (absolute name) to the names it provides."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *home})

    return __getattr__, __dir__, sorted(home)
