"""The JSONL sink: the run directory's machine-readable record.

- ``metrics.jsonl``: one line per ``write_scalars``,
  ``{"step": N, "time": unix_s, "train/loss": ...}`` (NaN/inf as ``null``).
- ``events.jsonl``: one line per ``write_event``,
  ``{"time": unix_s, "step": N, "kind": ..., ...info}``.
- ``<name>/step_XXXXXXXX.jsonl``: one file per ``write_table``, one row a line,
  written to a temporary file and renamed, so a reader never sees half a table.

Both logs are appended to (a resumed run continues them; readers keep the last
line of a repeated step) and line-buffered: a crash loses at most one line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

from jaxalign.sinks.base import BaseSink, jsonable


class JsonlSink(BaseSink):
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics: TextIO | None = open(self.run_dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
        self._events: TextIO | None = open(self.run_dir / "events.jsonl", "a", buffering=1, encoding="utf-8")

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        record.update({(f"{prefix}/{name}" if prefix else name): float(value) for name, value in metrics.items()})
        self._metrics.write(json.dumps(jsonable(record)) + "\n")

    def write_event(self, step: int, kind: str, **info: Any) -> None:
        record = {"time": round(time.time(), 3), "step": int(step), "kind": kind, **info}
        self._events.write(json.dumps(jsonable(record)) + "\n")

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        folder = self.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"step_{int(step):08d}.jsonl"
        temporary = folder / f".{final.name}.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(jsonable(row)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)  # atomic on POSIX: readers see the old file or the whole new one

    def close(self) -> None:
        for handle in (self._metrics, self._events):
            if handle is not None:
                handle.close()
        self._metrics = self._events = None
