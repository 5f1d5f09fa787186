"""Where an evaluation's result goes: ``RUN_DIR/eval/NAME.json`` (written whole under a
temporary name, then renamed: a reader never sees half a file, and an interrupted eval
leaves the previous result in place) and the run's metrics sinks (scalars with the prefix
``eval/NAME`` at the result's step, then an ``eval`` event)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from jaxalign.sinks.base import jsonable


def write_result(folder: str | Path, result: Mapping[str, Any]) -> Path:
    """``folder/eval/NAME.json`` from ``result["name"]``; returns its path."""
    eval_dir = Path(folder) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    final = eval_dir / f"{result['name']}.json"
    temporary = eval_dir / f".{final.name}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(jsonable(dict(result)), handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final


def publish(sink: Any, result: Mapping[str, Any]) -> None:
    """Scalars ``eval/NAME/METRIC`` at ``result["step"]`` and an ``eval`` event on ``sink``."""
    step = int(result.get("step") or 0)
    numbers = {name: value for name, value in result["metrics"].items() if isinstance(value, (int, float))}
    sink.write_scalars(step, numbers, f"eval/{result['name']}")
    sink.write_event(step, "eval", name=result["name"], eval_kind=result["kind"], final=False)


def open_run_sinks(run_dir: Path, config: Any | None) -> Any:
    """The run's configured sinks (its ``log`` section), or the JSONL sink for a run without a
    readable config. Stand-alone evaluations add to the run's own files and dashboards."""
    from jaxalign.sinks import open_sinks

    entries = config.log.resolved_sinks() if config is not None else [("jsonl", {})]
    return open_sinks(entries, run_dir)
