"""The console sink: the progress bar and one-line messages on stderr.

``start`` opens the bar (``total_steps``), ``train`` scalars move it (loss,
tokens/s), ``eval`` scalars print one line, tables print a few rows, and
``finish``/``stop``/``error`` close it. See ``metrics_log.ProgressBar`` for why
the bar is our own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, TextIO

from jaxalign.metrics_log import ProgressBar
from jaxalign.sinks.base import BaseSink, jsonable


class ConsoleSink(BaseSink):
    def __init__(self, run_dir: str | Path | None = None, stream: TextIO | None = None, min_interval_s: float = 30.0,
                 table_rows: int = 2, width: int = 160) -> None:
        self.stream, self.min_interval_s = stream, min_interval_s
        self.table_rows, self.width = table_rows, width
        self._bar: ProgressBar | None = None

    def write_event(self, step: int, kind: str, **info: Any) -> None:
        if kind == "start":
            self._close_bar()
            self._bar = ProgressBar(int(info.get("total_steps", 0)), start_step=step, stream=self.stream,
                                    min_interval_s=self.min_interval_s)
        elif kind in ("finish", "stop", "error"):
            self._close_bar()

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        if prefix == "train" and self._bar is not None:
            self._bar.update(step, loss=_get(metrics, "loss"), tokens_per_s=_get(metrics, "tokens_per_s"))
        elif prefix == "eval":
            self._message(f"eval at step {step}: " + summary(metrics))

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        self._message(f"{name} at step {step}: {len(rows)} rows")
        for row in rows[: self.table_rows]:
            text = json.dumps(jsonable(row), ensure_ascii=False)
            self._message("  " + (text if len(text) <= self.width else text[: self.width - 3] + "..."))

    def close(self) -> None:
        self._close_bar()

    def _message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.message(text)
        else:
            stream = self.stream if self.stream is not None else _stderr()
            stream.write(text + "\n")
            stream.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _get(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def _stderr() -> TextIO:
    import sys

    return sys.stderr


def summary(metrics: Mapping[str, float]) -> str:
    """``name value, ...`` of the finite metrics, sorted by name."""
    return ", ".join(f"{name} {float(value):.4g}" for name, value in sorted(metrics.items())
                     if math.isfinite(float(value)))
