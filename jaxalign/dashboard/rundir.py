"""One run directory as the dashboard sees it, read incrementally while the run writes it.

Every file is optional: a run that has not logged yet, or was written by an older jaxalign
without ``events.jsonl`` or completions, still shows what it has. Layout::

    RUN/config.yaml                     resolved config (algo, max_steps)
    RUN/metrics.jsonl                   {"step", "time", "train/...", "eval/..."} per line
    RUN/events.jsonl                    {"time", "step", "kind", ...} per line
    RUN/completions/step_00000120.jsonl sampled replies of one RL step, written whole
    RUN/eval/NAME.json                  one ``jaxalign eval`` result
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from jaxalign.dashboard.jsonl import JsonlTail, read_jsonl
from jaxalign.dashboard.metrics_table import MetricsTable

COMPLETIONS_FILE = re.compile(r"^step_(\d+)\.jsonl$")
RUN_MARKERS = ("metrics.jsonl", "config.yaml", "events.jsonl")
# A run whose files changed this recently and that logged no finish/stop/error is "running".
LIVE_WINDOW_S = 120.0


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


@dataclass
class _Cached:
    """A file parsed once per (mtime, size)."""

    key: tuple[int, int] | None = None
    value: Any = None


@dataclass
class RunDir:
    path: Path
    name: str
    metrics: MetricsTable = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.metrics = MetricsTable(self.path / "metrics.jsonl")
        self._events_tail = JsonlTail(self.path / "events.jsonl")
        self._config = _Cached()
        self._evals: dict[str, _Cached] = {}
        self._completions: dict[int, _Cached] = {}
        self._listing_key: tuple = ()

    # ------------------------------------------------------------ following the files

    def refresh(self) -> bool:
        """Reads what changed since the last call; True when anything did."""
        changed = self.metrics.refresh()
        records, restarted = self._events_tail.read()
        if restarted:
            self.events = []
        if records:
            self.events.extend(r for r in records if isinstance(r.get("kind"), str))
        listing = (self._stat_key(self.path / "config.yaml"), self._dir_key("completions"), self._dir_key("eval"))
        changed = changed or restarted or bool(records) or listing != self._listing_key
        self._listing_key = listing
        return changed

    @staticmethod
    def _stat_key(path: Path) -> tuple[int, int] | None:
        try:
            stat = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_mtime_ns, stat.st_size

    def _dir_key(self, name: str) -> tuple:
        try:
            entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(self.path / name))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        return tuple(entries)

    def _cached(self, cache: _Cached, path: Path, load) -> Any:
        key = self._stat_key(path)
        if key is None:
            return None
        if cache.key != key:
            cache.key, cache.value = key, load(path)
        return cache.value

    # ------------------------------------------------------------ what the run says about itself

    def config(self) -> dict[str, Any]:
        def load(path: Path) -> dict[str, Any]:
            try:
                value = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                return {}
            return value if isinstance(value, dict) else {}

        return self._cached(self._config, self.path / "config.yaml", load) or {}

    def status(self) -> tuple[str, str]:
        """``(state, message)``: running, finished, stopped, error or idle."""
        ended = {"finish": "finished", "stop": "stopped", "error": "error"}
        last = next((e for e in reversed(self.events) if e["kind"] in ended or e["kind"] in ("start", "resume")), None)
        if last is not None and last["kind"] in ended:
            return ended[last["kind"]], str(last.get("message", ""))
        if (self.path / "export").is_dir() and last is None:
            return "finished", ""
        newest = max((key[0] for key in (self._stat_key(self.path / "metrics.jsonl"),
                                         self._stat_key(self.path / "events.jsonl")) if key), default=0)
        return ("running" if time.time() - newest / 1e9 < LIVE_WINDOW_S else "idle"), ""

    # ------------------------------------------------------------ completions and evaluations

    def completion_steps(self) -> list[int]:
        try:
            names = os.listdir(self.path / "completions")
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(m.group(1)) for m in map(COMPLETIONS_FILE.match, names) if m)

    def completions(self, step: int) -> tuple[list[dict[str, Any]], int]:
        """Rows of one step's completions file and how many of its lines were skipped."""
        path = self.path / "completions" / f"step_{step:08d}.jsonl"
        cache = self._completions.setdefault(step, _Cached())
        return self._cached(cache, path, read_jsonl) or ([], 0)

    def evaluations(self) -> list[dict[str, Any]]:
        """Each ``eval/NAME.json`` as a dict with its ``name``; unreadable files become problems."""
        try:
            names = sorted(n for n in os.listdir(self.path / "eval") if n.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return []

        def load(path: Path) -> dict[str, Any] | str:
            try:
                value = orjson.loads(path.read_bytes())
            except (orjson.JSONDecodeError, OSError) as err:
                return f"{path}: not readable as JSON ({err})"
            return value if isinstance(value, dict) else f"{path}: not a JSON object"

        results = []
        for name in names:
            value = self._cached(self._evals.setdefault(name, _Cached()), self.path / "eval" / name, load)
            if isinstance(value, dict):
                results.append({**value, "name": name[: -len(".json")]})
            elif isinstance(value, str):
                results.append({"name": name[: -len(".json")], "problem": value})
        return results
