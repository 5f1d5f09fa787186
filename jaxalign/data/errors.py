"""Bad input: the error that names where it is, and the counter of skipped rows."""

from __future__ import annotations

import collections
import threading


class DataError(ValueError):
    """A row (or file) the pipeline cannot use.

    ``where`` is ``file:line`` for JSON(L) files and ``source:row N`` otherwise;
    ``reason`` is a short snake_case code (the key counted in ``stats`` when
    ``on_bad_row: skip``); ``field`` names the column at fault, if one is.
    """

    def __init__(self, where: str, reason: str, detail: str, field: str | None = None):
        self.where = where
        self.reason = reason
        self.detail = detail
        self.field = field
        column = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{column} {detail}")


class Counter:
    """Thread-safe named counts (Grain may run transforms in reader threads)."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def update(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
