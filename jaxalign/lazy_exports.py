"""A package's public names, imported from their modules on first use (PEP 562).

Why: the ``jaxalign`` command builds its whole argument parser from every
subcommand's module, and a package ``__init__`` that imports its implementation
made ``jaxalign --help``, ``jaxalign dashboard`` and ``jaxalign data stats`` import
jax, transformers and Grain first (1.4 s before any output).

A package lists its exports as ordinary imports under ``if TYPE_CHECKING:``, so
type checkers and editors see them, names them in ``__all__`` (which linters read),
and ends with ``__getattr__, __dir__ = lazy_exports(__name__, __file__)``: that reads
the block, checks it against ``__all__``, and imports each name when it is first used.
Hand-written rather than the ``lazy_loader`` package (which reads ``.pyi`` stubs):
it is the few lines below.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable


def _type_checking_imports(source: str, where: str) -> dict[str, tuple[str, str]]:
    """``{exported name: (module, name in it)}`` from the ``from X import a, b as c``
    statements under ``if TYPE_CHECKING:`` in ``source``."""
    exports: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom) or statement.level or statement.module is None:
                raise ValueError(f"{where}:{statement.lineno}: only 'from package.module import name' "
                                 "statements belong under TYPE_CHECKING")
            for alias in statement.names:
                exports[alias.asname or alias.name] = (statement.module, alias.name)
    return exports


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``__init__`` is ``init_file``."""
    home = _type_checking_imports(Path(init_file).read_text(encoding="utf-8"), init_file)
    declared = getattr(sys.modules[package], "__all__", None)
    if declared is None or sorted(declared) != sorted(home):
        raise ImportError(f"{init_file}: __all__ must name exactly what is imported under TYPE_CHECKING "
                          f"({sorted(home)})")

    def __getattr__(name: str) -> Any:
        if name in home:
            module, attribute = home[name]
            return getattr(importlib.import_module(module), attribute)
        # A submodule, as the eager __init__ made every one it imported an attribute.
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *home})

    return __getattr__, __dir__
