"""The pipeline's results table (markdown) and the atomic file writes it uses."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

# (metric in an evaluation's results, column header); a column appears when some stage has it.
COLUMNS = (
    ("alignment/decline_rate", "decline"),
    ("alignment/help_rate", "help"),
    ("alignment/over_refusal_rate", "over-refusal"),
    ("reward", "reward"),
    ("gold/reward", "gold"),
    ("win_rate", "win rate vs ref"),
    ("kl", "KL to ref"),
    ("mean_length", "tokens"),
)


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def results_table(pipeline, results: Mapping[str, Mapping[str, Mapping[str, float]]],
                  timings: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown: one row per evaluated stage, for each evaluation the columns of ``COLUMNS`` that
    some stage has, then the stage's training wall and CPU seconds.

    results: ``{stage: {eval name: metrics}}``; timings: ``{stage: {train_wall_s, train_cpu_s, ...}}``."""
    columns = []
    for spec in pipeline.evals:
        for metric, header in COLUMNS:
            if any(metric in by_eval.get(spec["name"], {}) for by_eval in results.values()):
                columns.append((spec["name"], metric, f"{header} ({spec['name']})"))
    headers = ["stage", *(header for _, _, header in columns), "train wall s", "train cpu s"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for stage, by_eval in results.items():
        cells = [stage, *(_cell(by_eval.get(name, {}).get(metric)) for name, metric, _ in columns)]
        cells += [_cell(timings.get(stage, {}).get(key)) for key in ("train_wall_s", "train_cpu_s")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {spec['name']}: {spec['prompts']}, {spec['num_generations']} repl{'y' if spec['num_generations'] == 1 else 'ies'}"
             f" per prompt, temperature {spec['temperature']}, max {spec['max_new_tokens']} new tokens, seed {spec['seed']}"
             + (f"; KL and win rate against {spec['reference']}"
                if str(spec.get("reference") or "none").lower() not in ("none", "null", "") else "")
             for spec in pipeline.evals]
    spent_wall = sum(value for entry in timings.values() for key, value in entry.items() if key.endswith("wall_s"))
    spent_cpu = sum(value for entry in timings.values() for key, value in entry.items() if key.endswith("cpu_s"))
    return (f"# Pipeline results: {pipeline.path}\n\n" + "\n".join(lines) + "\n\nEvaluations:\n" + "\n".join(notes)
            + f"\n\nTraining and evaluation time recorded: {spent_wall:.0f} s wall, {spent_cpu:.0f} s CPU "
            "(user + system of the pipeline process, all cores).\n")
