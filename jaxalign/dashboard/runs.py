"""The runs a dashboard or report shows: run dirs named on the command line, or found under
a parent folder (which is searched again on every refresh, so new runs appear live)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from jaxalign.dashboard.rundir import RunDir, is_run_dir

# Folders inside a run that never hold another run: not worth walking into.
_RUN_INTERNALS = {"checkpoints", "tensorboard", "export", "completions", "eval"}
SEARCH_DEPTH = 3


class RunDirError(ValueError):
    """A path given on the command line is not a run dir nor a folder of runs."""


def find_runs(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run dirs at or below ``root`` (``depth`` folder levels down), sorted by path."""
    if is_run_dir(root):
        return [root]
    if depth == 0:
        return []
    try:
        children = sorted(e.path for e in os.scandir(root) if e.is_dir() and e.name not in _RUN_INTERNALS
                          and not e.name.startswith("."))
    except (PermissionError, FileNotFoundError, NotADirectoryError):
        return []
    return [run for child in children for run in find_runs(Path(child), depth - 1)]


def _display_names(paths: list[Path], roots: dict[Path, Path]) -> list[str]:
    """Short unique names: relative to the folder they were found under, else the dir's name."""
    names = []
    for path in paths:
        root = roots[path]
        names.append(str(path.relative_to(root)) if path != root else path.name)
    for index, name in enumerate(names):
        if names.count(name) > 1:
            names[index] = str(paths[index])
    return names


class RunSet:
    """The runs under the given paths, followed as they grow. Thread-safe."""

    def __init__(self, paths: list[str | Path]) -> None:
        self.roots: list[Path] = []
        for given in paths:
            path = Path(given).expanduser().resolve()
            if not path.exists():
                raise RunDirError(f"run dir not found: {given}")
            if not path.is_dir():
                raise RunDirError(f"not a directory: {given} (give a run dir or a folder of run dirs)")
            if not find_runs(path):
                raise RunDirError(f"no run under {given}: a run dir holds metrics.jsonl or config.yaml "
                                  f"(found none {SEARCH_DEPTH} folder levels down)")
            self.roots.append(path)
        self.runs: list[RunDir] = []
        self.version = 0
        self._lock = threading.RLock()
        self.refresh()

    def refresh(self) -> int:
        """Finds new runs, reads what every run appended; returns the data version (bumped on change)."""
        with self._lock:
            found: dict[Path, Path] = {}
            for root in self.roots:
                for path in find_runs(root):
                    found.setdefault(path, root)
            known = {run.path for run in self.runs}
            changed = False
            if set(found) - known:
                paths = [run.path for run in self.runs] + [p for p in found if p not in known]
                names = _display_names(paths, {**{r.path: found.get(r.path, r.path) for r in self.runs}, **found})
                by_path = {run.path: run for run in self.runs}
                self.runs = [by_path.get(p) or RunDir(p, n) for p, n in zip(paths, names)]
                for run, name in zip(self.runs, names):
                    run.name = name
                changed = True
            for run in self.runs:
                changed = run.refresh() or changed
            if changed:
                self.version += 1
            return self.version

    def __enter__(self) -> "RunSet":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
