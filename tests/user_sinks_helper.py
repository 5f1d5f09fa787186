"""A user's own sink, named in YAML as ``tests.user_sinks_helper:RecordingSink`` with a
``path`` option: it writes every call it gets to that file as JSON lines. Not a test module."""

from __future__ import annotations

import json
from pathlib import Path

from jaxalign.sinks import BaseSink


class RecordingSink(BaseSink):
    def __init__(self, run_dir: Path, path: str) -> None:
        self._file = open(path, "a", buffering=1)
        self._write(["init", str(run_dir)])

    def write_scalars(self, step, metrics, prefix):
        self._write(["scalars", step, dict(metrics), prefix])

    def write_table(self, step, name, rows):
        self._write(["table", step, name, rows])

    def write_event(self, step, kind, **info):
        self._write(["event", step, kind, info])

    def close(self):
        self._write(["close"])
        self._file.close()

    def _write(self, call):
        self._file.write(json.dumps(call) + "\n")


def read_calls(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
