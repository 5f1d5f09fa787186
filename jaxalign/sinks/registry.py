"""Sinks by name: the built-ins, ``@register_sink`` ones, and import paths.

A sink factory is called as ``factory(run_dir, **options)`` and returns a
``Sink``; a class is a factory. ``log.sinks`` entries name one
(``jsonl``, ``mypkg.sinks:MySink``, ``path/to/file.py:MySink``) or give options
too (``{name: mypkg.sinks:MySink, every: 5}``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from jaxalign.plugins import is_import_path, load_attribute
from jaxalign.sinks.base import Sink, Sinks
from jaxalign.sinks.console import ConsoleSink
from jaxalign.sinks.jsonl import JsonlSink
from jaxalign.sinks.tensorboard import TensorBoardSink
from jaxalign.sinks.wandb import WandbSink

SinkFactory = Callable[..., Sink]
_REGISTRY: dict[str, SinkFactory] = {
    "jsonl": JsonlSink,
    "tensorboard": TensorBoardSink,
    "console": ConsoleSink,
    "wandb": WandbSink,
}


def register_sink(name: str) -> Callable[[SinkFactory], SinkFactory]:
    """Decorator: ``log.sinks: [name]`` then builds the sink with ``factory(run_dir, **options)``."""
    if not name or is_import_path(name):
        raise ValueError(f"register_sink: a sink name must be non-empty and contain no ':', got {name!r}")

    def decorate(factory: SinkFactory) -> SinkFactory:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"a sink named {name!r} is already registered ({existing!r}); pick another name")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_sinks() -> list[str]:
    return list(_REGISTRY)


def get_sink_factory(name: str) -> SinkFactory:
    """The factory ``name`` names (registered, or ``module:Factory`` / ``file.py:Factory``)."""
    if is_import_path(name):
        factory = load_attribute(name, "sink", noun="Class")
        if not callable(factory):
            raise ValueError(f"sink '{name}': {name.rpartition(':')[2]} is a {type(factory).__name__}, "
                             "not a class or function that builds a sink")
        return factory
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list_sinks(), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown sink '{name}'; built-in sinks: {', '.join(list_sinks())}, or name your own as "
                     f"'package.module:Class' or 'file.py:Class'.{hint}")


def open_sinks(entries: list[tuple[str, dict[str, Any]]], run_dir: str | Path, is_main_process: bool = True,
               into: Sinks | None = None) -> Sinks:
    """Builds ``(name, options)`` sinks for ``run_dir`` (into ``into`` if given). On processes
    other than 0 it builds nothing: one process writes the run's files."""
    sinks = into if into is not None else Sinks()
    if not is_main_process:
        return sinks
    for name, options in entries:
        try:
            sink = get_sink_factory(name)(Path(run_dir), **options)
        except Exception as err:
            sinks.close()
            raise ValueError(f"sink '{name}' could not start: {type(err).__name__}: {err}") from err
        missing = [m for m in ("write_scalars", "write_table", "write_event", "close") if not callable(getattr(sink, m, None))]
        if missing:
            sinks.close()
            raise ValueError(f"sink '{name}' has no {', '.join(missing)}; subclass jaxalign.sinks.BaseSink "
                             "(no-op defaults) and override what you need")
        sinks.add(sink, name)
    return sinks
