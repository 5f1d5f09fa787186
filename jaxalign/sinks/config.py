"""``LogConfig``: the ``log:`` section (how often, and to which sinks)."""

from __future__ import annotations

import dataclasses
from typing import Any

DEFAULT_SINKS = ("jsonl", "console", "tensorboard")


@dataclasses.dataclass
class LogConfig:
    """every_steps: optimizer steps between train-metric writes.

    sinks: where scalars, tables and events go, in order. Each entry is a name
      (``jsonl``, ``tensorboard``, ``console``, ``wandb``, a ``@register_sink``
      name, or ``package.module:Class`` / ``path/to/file.py:Class``) or a mapping
      ``{name: ..., <option>: ...}`` whose options go to the sink's constructor.
      Default: ``jsonl``, ``console``, plus ``tensorboard`` unless
      ``tensorboard: false``, plus ``wandb`` when ``wandb`` is set.
    tensorboard: with the default sinks, whether TensorBoard is one of them.
    wandb: ``wandb.init`` arguments (e.g. ``{project: my-project}``); used only if
      the wandb package is installed.
    completions_every: RL algorithms write the replies they sampled (the
      ``completions`` table) every this many steps; default ``every_steps``, 0 = never.
    """

    every_steps: int = 10
    sinks: list[Any] | None = None
    tensorboard: bool = True
    wandb: dict[str, Any] | None = None
    completions_every: int | None = None

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"log.every_steps must be >= 1, got {self.every_steps}")
        if self.completions_every is not None and self.completions_every < 0:
            raise ValueError(f"log.completions_every must be >= 0 (0 = never), got {self.completions_every}")
        if self.sinks is None:
            return
        names = [name for name, _ in self.resolved_sinks()]
        if not self.tensorboard and "tensorboard" in names:
            raise ValueError("log.tensorboard is false but log.sinks lists tensorboard; remove one of them")
        if self.wandb is not None and "wandb" not in names:
            raise ValueError("log.wandb is set but log.sinks does not list wandb; add it or remove log.wandb")
        if len(set(names)) != len(names):
            raise ValueError(f"log.sinks lists a sink twice: {names}")
        from jaxalign.sinks.registry import get_sink_factory

        for name in names:
            get_sink_factory(name)  # unknown names and bad import paths fail at load, not at the first write

    def writes_completions(self, step: int) -> bool:
        """Whether step ``step`` (1-based) writes the ``completions`` table."""
        every = self.every_steps if self.completions_every is None else self.completions_every
        return every > 0 and step % every == 0

    def resolved_sinks(self) -> list[tuple[str, dict[str, Any]]]:
        """``(name, options)`` of every sink the run opens."""
        if self.sinks is None:
            names = [n for n in DEFAULT_SINKS if n != "tensorboard" or self.tensorboard]
            entries: list[Any] = names + (["wandb"] if self.wandb is not None else [])
        elif isinstance(self.sinks, (list, tuple)):
            entries = list(self.sinks)
        else:
            raise ValueError(f"log.sinks must be a list of sink names, got {self.sinks!r}")
        resolved = []
        for entry in entries:
            if isinstance(entry, str):
                name, options = entry, {}
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                options = {key: value for key, value in entry.items() if key != "name"}
                name = entry["name"]
            else:
                raise ValueError(f"log.sinks: each entry is a sink name or a mapping with a 'name', got {entry!r}")
            if name == "wandb":
                options = {**(self.wandb or {}), **options}
            resolved.append((name, options))
        return resolved
