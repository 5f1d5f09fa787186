"""User code named in YAML: ``package.module:name`` or ``path/to/file.py:name``.

One loader for every plug-in point (losses, algorithms, sinks, PPO's reward
functions), so all of them accept the same two spellings and fail the same way:
a ``PluginError`` (a ``ValueError``) naming the spec and what went wrong.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A ``module:name`` spec that cannot be imported or names nothing usable."""


def is_import_path(spec: str) -> bool:
    """Whether ``spec`` names user code (``module:name`` / ``file.py:name``) rather than a registered name."""
    return ":" in spec


def load_attribute(spec: str, what: str, noun: str = "name") -> Any:
    """The object ``spec`` names. ``what`` and ``noun`` word the errors (``"loss"``,
    ``"function"``: "loss 'x': expected 'package.module:function' ...").

    A ``.py`` path is imported once per resolved file (as a module named after
    its path), so loading the same spec twice gives the same object.
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise PluginError(f"{what} '{spec}': expected 'package.module:{noun}' or "
                          f"'path/to/file.py:{noun}'")
    try:
        module = _import_file(Path(module_name)) if module_name.endswith(".py") else importlib.import_module(module_name)
    except Exception as err:  # any import-time failure is the user's module's
        raise PluginError(f"{what} '{spec}': cannot import module '{module_name}': {type(err).__name__}: {err}") from err
    found = getattr(module, attribute, None)
    if found is None:
        raise PluginError(f"{what} '{spec}': {module_name} has no attribute '{attribute}'")
    return found


def _import_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    name = f"jaxalign_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
