"""Notable things that happened to a run, as JSON lines in ``<run_dir>/events.jsonl``.

Metrics say how training went; events say what the run did about trouble:
a checkpoint found damaged and set aside, a fallback to an older one, a
diverging loss, a stale lock taken over, rows skipped. One object per line::

    {"time": 1733212345.1, "step": 40, "kind": "checkpoint_fallback", "message": "...", ...}

Only the main process writes. A resumed run appends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jaxalign import distributed

EVENTS_FILE = "events.jsonl"


def record(run_dir: str | Path, kind: str, message: str, step: int | None = None, **fields: Any) -> None:
    """Appends one event (``kind`` a short snake_case name) to ``<run_dir>/events.jsonl``."""
    if not distributed.is_main_process():
        return
    event = {"time": round(time.time(), 3), "step": step, "kind": kind, "message": message, **fields}
    path = Path(run_dir) / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event, default=str) + "\n")


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every event recorded in ``run_dir`` (oldest first); [] when there are none."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
