"""Reading JSONL files that another process is still appending to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """JSON objects of complete lines, and how many lines were not one (skipped, counted)."""
    lines = [line for line in data.splitlines() if line.strip()]
    try:  # one parse for the common case of all lines good: about 2x faster than line by line
        records = orjson.loads(b"[" + b",".join(lines) + b"]")
        if all(isinstance(record, dict) for record in records):
            return records, 0
    except orjson.JSONDecodeError:
        pass
    records, bad = [], 0
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


class JsonlTail:
    """The complete lines appended to a JSONL file since the last ``read``.

    A last line without its newline is left for the next read: the writer may be halfway
    through it, or was killed mid-write (then it is never read; ``pending_bytes`` says so).
    A line that is not a JSON object (a killed write followed by a resumed run's appends)
    is skipped and counted in ``skipped``. A file that shrank or was replaced is read anew.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.skipped = 0
        self.pending_bytes = 0
        self._identity: tuple[int, int] | None = None

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """``(new records, restarted)``; ``restarted`` means earlier records are void."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            restarted = self.offset > 0
            self.offset, self.skipped, self.pending_bytes, self._identity = 0, 0, 0, None
            return [], restarted
        identity = (stat.st_dev, stat.st_ino)
        restarted = False
        if stat.st_size < self.offset or (self._identity is not None and identity != self._identity):
            self.offset, self.skipped, restarted = 0, 0, True
        self._identity = identity
        if stat.st_size == self.offset:
            self.pending_bytes = 0
            return [], restarted
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(stat.st_size - self.offset)
        except OSError:  # unreadable for now (permissions, a network filesystem): try again next poll
            return [], restarted
        end = data.rfind(b"\n") + 1
        self.pending_bytes = len(data) - end
        if end == 0:
            return [], restarted
        self.offset += end
        records, bad = parse_lines(data[:end])
        self.skipped += bad
        return records, restarted


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """All JSON-object lines of a file written whole (atomically), and how many lines were skipped."""
    return parse_lines(Path(path).read_bytes())
