"""What the page draws, as one JSON-able dict built from a ``RunSet``; and completion rows.

The live server sends ``build_payload`` whenever the runs' data version changes; the static
report embeds it once. Both pages run the same app.js over it.
"""

from __future__ import annotations

import os
from typing import Any

from jaxalign.dashboard.evals import eval_view
from jaxalign.dashboard.figures import RunData, chart_sections
from jaxalign.dashboard.plotting import run_color
from jaxalign.dashboard.rundir import RunDir
from jaxalign.dashboard.runs import RunSet

LIFECYCLE = ("start", "resume", "stop", "error", "finish")  # listed per run; checkpoints/evals are drawn


def _run_meta(run: RunDir, index: int) -> dict[str, Any]:
    config = run.config()
    frame = run.metrics.frame()
    state, message = run.status()
    try:
        updated = os.stat(run.path / "metrics.jsonl").st_mtime
    except FileNotFoundError:
        updated = None
    return {
        "id": index, "name": run.name, "path": str(run.path), "color": run_color(index),
        "algo": str(config.get("algo", "")), "max_steps": config.get("max_steps"),
        "step": int(frame.index.max()) if len(frame) else None, "status": state, "message": message,
        "skipped_lines": run.metrics.skipped_lines, "partial_last_line": run.metrics.pending_bytes > 0,
        "completion_steps": run.completion_steps(), "updated": updated,
        "events": [e for e in run.events if e.get("kind") in LIFECYCLE],
    }


def build_payload(runset: RunSet) -> dict[str, Any]:
    """``{"version", "runs": [meta], "sections": [chart sections], "evals": {"table", "figures"}}``."""
    with runset:
        metas = [_run_meta(run, index) for index, run in enumerate(runset.runs)]
        data = [RunData(index, run.name, run_color(index), run.metrics.frame(), list(run.events))
                for index, run in enumerate(runset.runs)]
        evaluations = [(run.name, index, result) for index, run in enumerate(runset.runs)
                       for result in run.evaluations()]
        return {"version": runset.version, "runs": metas, "sections": chart_sections(data),
                "evals": eval_view(evaluations, [run_color(i) for i in range(len(runset.runs))])}


def _text(value: Any) -> str:
    """A prompt or reply as text: chat messages become ``role: content`` lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return "" if value is None else str(value)


def completion_rows(run: RunDir, step: int | None, query: str = "", limit: int = 500) -> dict[str, Any]:
    """Rows of one step (``None``: the latest; ``-1``: every step) whose prompt or reply
    contains ``query`` (case-insensitive): ``{"steps", "step", "rows", "total", "skipped"}``."""
    steps = run.completion_steps()
    if step is None:
        step = steps[-1] if steps else None
    chosen_steps = steps if step == -1 else [s for s in steps if s == step]
    needle = query.lower().strip()
    rows, total, skipped = [], 0, 0
    for at in reversed(chosen_steps):  # newest first
        records, bad = run.completions(at)
        skipped += bad
        for record in records:
            prompt, completion = _text(record.get("prompt")), _text(record.get("completion"))
            if needle and needle not in prompt.lower() and needle not in completion.lower():
                continue
            total += 1
            if len(rows) < limit:
                rows.append({**record, "step": record.get("step", at), "prompt": prompt, "completion": completion})
    return {"steps": steps, "step": step, "rows": rows, "total": total, "skipped": skipped}
