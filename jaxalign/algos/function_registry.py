"""A registry of named pure functions with import-path fallback: what GRPO's advantage
estimators and policy losses are looked up in (``grpo.advantage_estimator``,
``grpo.loss_type``). A registered name, ``package.module:function`` or
``path/to/file.py:function`` (a user's function need not be registered)."""

from __future__ import annotations

import difflib
from typing import Callable

from jaxalign.plugins import is_import_path, load_attribute


class FunctionRegistry:
    """``register(name)`` decorates a function; ``get(spec)`` finds it (unknown names raise
    ``ValueError`` naming ``option`` and the close registered name)."""

    def __init__(self, option: str, noun: str):
        self.option, self.noun = option, noun
        self._functions: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        if not name or is_import_path(name):
            raise ValueError(f"a {self.noun} name must be non-empty and contain no ':', got {name!r}")

        def decorate(fn: Callable) -> Callable:
            self._functions[name] = fn
            return fn

        return decorate

    def names(self) -> list[str]:
        return list(self._functions)

    def get(self, spec: str) -> Callable:
        if is_import_path(spec):
            found = load_attribute(spec, self.option, noun="function")
            if not callable(found):
                raise ValueError(f"{self.option} '{spec}': expected a function, got {type(found).__name__}")
            return found
        if spec in self._functions:
            return self._functions[spec]
        close = difflib.get_close_matches(spec, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{self.option} must be one of {', '.join(self.names())} or an import path to your own "
                         f"{self.noun} ('package.module:function' or 'file.py:function'), got '{spec}'.{hint}")
