"""Reading ``<run_dir>/events.jsonl``: what a run did, one JSON object per line.

The trainer writes events through its sinks (``jaxalign.sinks``: the ``jsonl``
sink appends ``{"time", "step", "kind", ...}``). Two families share the file:
the run's course (``LIFECYCLE``: start, resume, checkpoint, eval, finish, stop,
error) and what it did about trouble (``checkpoint_damaged``,
``checkpoint_fallback``, ``loss_diverging``, ``non_finite``,
``stale_lock_taken_over``), which carry a ``message``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"
LIFECYCLE = frozenset({"start", "resume", "checkpoint", "eval", "finish", "stop", "error"})
# The lifecycle events that say whether a run is training, finished or stopped. An ``eval`` (a
# ``jaxalign eval`` of a finished run) or a late ``checkpoint`` note comes after ``finish`` and
# leaves the run finished.
RUN_STATE = frozenset({"start", "resume", "finish", "stop", "error"})


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every event recorded in ``run_dir`` (oldest first); [] when there are none.
    A partial last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def problems(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events about trouble: every event whose kind is not part of the run's course."""
    return [event for event in read(run_dir) if event.get("kind") not in LIFECYCLE]
