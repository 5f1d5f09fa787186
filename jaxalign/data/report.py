"""Saying what the data layer left out or cut: skipped rows, truncated and dropped examples.

``SkippedRows`` collects the rows ``on_bad_row: skip`` leaves out, per source
file, with the first few reasons; ``report`` logs them and fails when too
large a share of the split was bad (a wrong ``format``, a wrong file). The
trainer logs ``data_metrics`` with its train and eval metrics
(``data/skipped_rows``, ``data/truncated``, ``data/dropped``) and warns once
per split when examples start being truncated.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from jaxalign.data.errors import DataError
from jaxalign.metrics_log import get_logger

log = get_logger("data")

SHOWN_REASONS = 3  # example rows named per source file


def source_of(where: str) -> str:
    """The file (or dataset) part of ``file:line`` / ``name#split:row N``."""
    return where.rsplit(":", 1)[0] if ":" in where else where


@dataclasses.dataclass
class SkippedRows:
    """Rows left out by ``on_bad_row: skip``, per source, with the first few errors."""

    read: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def row_read(self, where: str) -> None:
        self.read[source_of(where)] += 1

    def row_skipped(self, error: DataError) -> None:
        source = source_of(error.where)
        self.skipped[source] += 1
        self.reasons.setdefault(source, collections.Counter())[error.reason] += 1
        shown = self.examples.setdefault(source, [])
        if len(shown) < SHOWN_REASONS:
            shown.append(str(error))

    def report(self, max_fraction: float, split: str | None = None) -> None:
        """Logs the skipped rows of each source; raises when more than
        ``max_fraction`` of a source's rows were skipped."""
        label = f" ({split})" if split else ""
        for source, count in self.skipped.items():
            total = self.read[source]
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.reasons[source].most_common())
            summary = (f"skipped {count} of {total} rows of {source} as bad (on_bad_row: skip; {reasons}), "
                       f"e.g. {'; '.join(self.examples[source])}")
            if count > max_fraction * total:
                raise ValueError(f"data{label}: {summary}. That is {count / total:.0%} of the rows, over "
                                 f"data.max_skipped_fraction {max_fraction:g}: check data.format and the file, "
                                 "or raise data.max_skipped_fraction")
            log.warning("data%s: %s", label, summary)


# Rows that were usable but not as a whole, and why (counted by the formats).
PARTIAL_ROWS = {
    "pairs_skipped/tied": "pairs of tied replies (equal scores, or a ranking's tied group) give no pair",
    "pairs_skipped/identical_responses": "pairs of identical replies were left out",
    "critique/no_revision": "critique rows without a revision give no pair and no revision SFT example",
}


def explain_partial_rows(counts: dict[str, int], split: str | None = None) -> None:
    """Warns once per kind of partly used row (``PARTIAL_ROWS``) with its count."""
    label = f" ({split})" if split else ""
    for key, why in PARTIAL_ROWS.items():
        if counts.get(key):
            log.warning("data%s: %d %s: %s", label, counts[key], key, why)


class DataReport:
    """Counts of the data a run consumed, as metrics; warns once per split on truncation.

    Every process must call ``metrics`` at the same points (the counts are
    summed over processes, each of which reads its own shard)."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._last: dict[str, dict[str, int]] = {}

    def metrics(self, pipeline: Any, since: dict[str, int] | None = None) -> dict[str, float]:
        """``data/skipped_rows`` (the split's rows left out when read), and
        ``data/truncated`` / ``data/dropped``: examples cut or dropped as
        overlong in the batches consumed since ``since`` (a ``pipeline.stats``
        snapshot) or since the previous call for this split, over all
        processes. Per interval, so a resumed run logs what an uninterrupted one does."""
        if pipeline is None:
            return {}
        now = pipeline.stats
        since = self._last.get(pipeline.split, {}) if since is None else since
        self._last[pipeline.split] = now
        names = ("truncated", "dropped/overlong")
        truncated, dropped = _sum_over_processes([now.get(name, 0) - since.get(name, 0) for name in names])
        if truncated and pipeline.split not in self._warned:
            self._warned.add(pipeline.split)
            log.warning("data (%s): %d example(s) truncated to fit data.max_length / max_prompt_length "
                        "(on_overlong: truncate); counted in metrics as data/truncated. Set data.on_overlong=drop "
                        "to leave them out, or raise data.max_length", pipeline.split, truncated)
        return {"data/skipped_rows": float(now.get("rows_skipped", 0)), "data/truncated": float(truncated),
                "data/dropped": float(dropped)}


def _sum_over_processes(counts: list[int]) -> list[int]:
    import jax

    if jax.process_count() == 1:
        return counts
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(counts, dtype=np.int64))
    return [int(v) for v in np.asarray(gathered).reshape(-1, len(counts)).sum(axis=0)]
