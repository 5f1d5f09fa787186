"""A run's ``metrics.jsonl`` as columns indexed by step, following the file as it grows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxalign.dashboard.jsonl import JsonlTail


def _records_frame(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, int]:
    """Numeric columns of the records that have an integer ``step``; and how many had none."""
    frame = pd.DataFrame.from_records(records)
    if "step" not in frame.columns:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")}), len(frame)
    steps = pd.to_numeric(frame["step"], errors="coerce")
    good = steps.notna().to_numpy()
    frame = frame.loc[good].copy()
    frame["step"] = steps[good].astype("int64")
    for column in frame.columns:
        if column != "step" and frame[column].dtype == object:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")  # null -> NaN; text -> NaN
    numeric = [c for c in frame.columns if c == "step" or pd.api.types.is_numeric_dtype(frame[c])]
    return frame[numeric].astype({c: "float64" for c in numeric if c != "step"}), int((~good).sum())


def latest_per_step(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per step, in step order, from rows in file order.

    A step lower than the line before it means the run was resumed from a checkpoint:
    the rows it overwrites (that step and later, from the abandoned stretch) are dropped.
    Rows of one step (train and eval lines, a repeated log) merge, the later value winning.
    """
    steps = raw["step"].to_numpy()
    keep = np.ones(len(steps), dtype=bool)
    for row in np.flatnonzero(steps[1:] < steps[:-1]) + 1:
        keep[:row] &= steps[:row] < steps[row]
    return raw.loc[keep].groupby("step", sort=True).last()


class MetricsTable:
    """``frame()``: ``[steps, metrics]`` float64, indexed by step; ``refresh()`` reads appends."""

    def __init__(self, path: str | Path) -> None:
        self._tail = JsonlTail(path)
        self._chunks: list[pd.DataFrame] = []
        self._frame: pd.DataFrame | None = None
        self.rows_without_step = 0

    @property
    def skipped_lines(self) -> int:
        return self._tail.skipped + self.rows_without_step

    @property
    def pending_bytes(self) -> int:
        return self._tail.pending_bytes

    def refresh(self) -> bool:
        """Reads what was appended; True when the table changed."""
        records, restarted = self._tail.read()
        if restarted:
            self._chunks, self._frame, self.rows_without_step = [], None, 0
        if records:
            chunk, without_step = _records_frame(records)
            self.rows_without_step += without_step
            self._chunks.append(chunk)
            self._frame = None
        return restarted or bool(records)

    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            if len(self._chunks) > 1:  # keep one raw chunk: later resumes need the file order
                self._chunks = [pd.concat(self._chunks, ignore_index=True)]
            raw = self._chunks[0] if self._chunks else pd.DataFrame({"step": pd.Series([], dtype="int64")})
            self._frame = latest_per_step(raw)
        return self._frame
