"""The sink interface: where a run's scalars, tables and events go.

A sink has four methods (``Sink``); ``BaseSink`` implements them as no-ops so a
sink of your own overrides only what it uses. ``Sinks`` fans one call out to a
list of sinks and is what the trainer (and an algorithm's rollout hook, which
gets it as ``setup``'s ``sink``) writes to. Only process 0 holds real sinks:
on the others the list is empty, so callers need no ``if is_main`` of their own.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

RESERVED_TABLE_NAMES = ("checkpoints", "eval", "export", "tensorboard", "wandb")  # folders the run dir already uses


@runtime_checkable
class Sink(Protocol):
    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        """Scalars at ``step``, named ``prefix/name`` (``train/loss``); ``prefix`` may be ""."""

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        """A table of rows (JSON-able dicts) at ``step``, e.g. the ``completions`` a rollout saw."""

    def write_event(self, step: int, kind: str, **info: Any) -> None:
        """Something that happened at ``step``: ``start``, ``resume``, ``checkpoint``, ``eval``,
        ``finish``, ``stop``, ``error`` (the trainer's), or an algorithm's own kind."""

    def close(self) -> None:
        """Flushes and releases files; called once, at the end of the run (also on errors)."""


class BaseSink:
    """No-op implementations of every ``Sink`` method, to subclass."""

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        pass

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        pass

    def write_event(self, step: int, kind: str, **info: Any) -> None:
        pass

    def close(self) -> None:
        pass


class SinkError(RuntimeError):
    """A sink failed; the message names it and the call."""


class Sinks(BaseSink):
    """A list of sinks behind one ``Sink``: every call goes to each, in order.

    ``names`` are what the config called them (for error messages). An empty
    ``Sinks`` (processes other than 0, code outside a run) drops everything.
    """

    def __init__(self, sinks: list[Sink] | None = None, names: list[str] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])
        self.names = list(names) if names is not None else [type(s).__name__ for s in self.sinks]

    def add(self, sink: Sink, name: str) -> None:
        self.sinks.append(sink)
        self.names.append(name)

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        if metrics:
            self._each("write_scalars", int(step), metrics, prefix)

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        check_table_name(name)
        self._each("write_table", int(step), name, list(rows))

    def write_event(self, step: int, kind: str, **info: Any) -> None:
        self._each("write_event", int(step), kind, **info)

    def close(self) -> None:
        """Closes every sink (all of them, even when one fails) and empties the list."""
        sinks, names = self.sinks, self.names
        self.sinks, self.names = [], []
        failures = []
        for sink, name in zip(sinks, names):
            try:
                sink.close()
            except Exception as err:  # the others must still close
                failures.append(f"sink '{name}' failed in close: {type(err).__name__}: {err}")
        if failures:
            raise SinkError("; ".join(failures))

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for sink, name in zip(self.sinks, self.names):
            try:
                getattr(sink, method)(*args, **kwargs)
            except Exception as err:
                raise SinkError(f"sink '{name}' failed in {method}: {type(err).__name__}: {err}") from err


def check_table_name(name: str) -> None:
    """Table names become folder names in the run directory: plain, and not one the run uses."""
    if (not isinstance(name, str) or not name or name.startswith(".") or name in RESERVED_TABLE_NAMES
            or not all(c.isalnum() or c in "_-." for c in name)):
        raise ValueError(f"table name {name!r}: use letters, digits, '_', '-' or '.', not starting with '.', "
                         f"and none of {', '.join(RESERVED_TABLE_NAMES)}")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as Python numbers/lists and non-finite floats as
    ``None`` (JSON has no NaN; strict readers such as jq and browsers reject it)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic) or hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
        return jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
