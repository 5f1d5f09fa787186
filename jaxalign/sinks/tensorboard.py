"""The TensorBoard sink, through tensorboardX's ``SummaryWriter`` (event files under
``<run_dir>/tensorboard/``; view them with ``tensorboard --logdir RUN_DIR/tensorboard``).

Why tensorboardX: it is the kept, public writer with light dependencies (numpy,
protobuf); the previous hand-written writer used ``tensorboard``'s internal
``EventFileWriter`` and built the protos itself. Tables become a text summary
(a markdown table of the first ``max_table_rows`` rows) under the table's name.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from jaxalign.sinks.base import BaseSink, jsonable

# tensorboardX warns once per NaN/inf scalar; a NaN metric (an empty batch's margin) is data, not a problem.
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


class TensorBoardSink(BaseSink):
    def __init__(self, run_dir: str | Path, flush_secs: float = 30.0, max_table_rows: int = 32) -> None:
        from tensorboardX import SummaryWriter

        self.max_table_rows = max_table_rows
        self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=flush_secs)

    def write_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        now = time.time()
        for name, value in metrics.items():
            self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), int(step), walltime=now)

    def write_table(self, step: int, name: str, rows: list[dict]) -> None:
        if rows:
            self._writer.add_text(name, markdown_table(rows[: self.max_table_rows]), int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(jsonable(value))
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)
