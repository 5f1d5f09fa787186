"""The Weights & Biases sink (``log.wandb: {project: ...}`` are ``wandb.init``'s arguments).

Used only when asked for; without the ``wandb`` package it warns once and does
nothing, so a config shared between machines still runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from jaxalign.metrics_log import get_logger
from jaxalign.sinks.base import BaseSink, jsonable


class WandbSink(BaseSink):
    def __init__(self, run_dir: str | Path, **init_args: Any) -> None:
        self._run = None
        try:
            import wandb
        except ImportError:
            get_logger().warning("log.wandb is set but the wandb package is not installed (pip install wandb); "
                                 "metrics go to the other sinks only")
            return
        self._wandb = wandb
        init_args.setdefault("dir", str(run_dir))
        self._run = wandb.init(**init_args)

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        if self._run is not None:
            self._run.log({(f"{prefix}/{name}" if prefix else name): float(v) for name, v in metrics.items()},
                          step=int(step))

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        if self._run is not None and rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            data = [[_cell(row.get(column)) for column in columns] for row in rows]
            self._run.log({name: self._wandb.Table(columns=columns, data=data)}, step=int(step))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def _cell(value: Any) -> Any:
    value = jsonable(value)
    return json.dumps(value) if isinstance(value, (dict, list)) else value
