"""The Evaluations tab: what ``jaxalign eval`` wrote to ``RUN/eval/NAME.json``, drawn as far as
each file goes. A metrics table for every file; for reward models the reliability diagram
(predicted vs observed preference probability per bin) and the chosen/rejected reward
distributions, when the file has them."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxalign.dashboard.plotting import axis, base_layout

HISTOGRAM_BINS = 40


def _numbers(values: Any) -> np.ndarray | None:
    if not isinstance(values, list) or not values:
        return None
    array = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def metrics_table(evaluations: list[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (run, eval file): ``{"run", "run_index", "name", "kind", "step", "metrics", "problem"}``."""
    rows = []
    for run_name, run_index, result in evaluations:
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        rows.append({"run": run_name, "run_index": run_index, "name": result["name"], "kind": result.get("kind", ""),
                     "step": result.get("step"), "problem": result.get("problem", ""),
                     "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}})
    return rows


def reliability_figure(evaluations: list[tuple[str, int, dict[str, Any]]], colors: list[str]) -> dict | None:
    """Observed against predicted preference probability per bin; marker area ~ bin count."""
    data = [{"type": "scatter", "x": [0, 1], "y": [0, 1], "mode": "lines", "name": "perfectly calibrated",
             "line": {"color": "#9ca3af", "dash": "dash", "width": 1}, "hoverinfo": "skip", "meta": {}}]
    for run_name, run_index, result in evaluations:
        table = result.get("reliability")
        if not isinstance(table, dict):
            continue
        predicted, observed = _numbers(table.get("predicted")), _numbers(table.get("observed"))
        if predicted is None or observed is None or len(predicted) != len(observed):
            continue
        counts = _numbers(table.get("count"))
        sizes = (6 + 18 * np.sqrt(counts / counts.max())) if counts is not None and len(counts) == len(
            predicted) and counts.max() > 0 else 9
        data.append({"type": "scatter", "x": predicted, "y": observed, "mode": "lines+markers",
                     "name": f"{run_name} · {result['name']}", "text": counts if counts is not None else None,
                     "line": {"color": colors[run_index], "width": 1.5},
                     "marker": {"size": sizes, "color": colors[run_index], "opacity": 0.8},
                     "hovertemplate": "predicted %{x:.3f}<br>observed %{y:.3f}<br>pairs %{text}<extra>%{fullData.name}</extra>",
                     "meta": {"run": run_index}})
    if len(data) == 1:
        return None
    layout = base_layout(legend=True, hovermode="closest", height=380,
                         xaxis=axis("predicted P(chosen preferred)", range=[0, 1]),
                         yaxis=axis("observed share chosen", range=[0, 1]))
    return {"id": "reliability", "title": "Reliability diagram", "wide": False, "figure": {"data": data, "layout": layout},
            "help": "Points on the diagonal: the reward model's probabilities mean what they say. Below it: over-confident."}


def distribution_figures(evaluations: list[tuple[str, int, dict[str, Any]]]) -> list[dict]:
    """Histograms of chosen and rejected rewards, one figure per eval file that has them."""
    figures = []
    for run_name, run_index, result in evaluations:
        chosen, rejected = _numbers(result.get("chosen_rewards")), _numbers(result.get("rejected_rewards"))
        if chosen is None or rejected is None or not len(chosen) or not len(rejected):
            continue
        edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=HISTOGRAM_BINS)
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        data = [{"type": "bar", "x": centres, "y": np.histogram(values, edges)[0], "width": width, "name": label,
                 "marker": {"color": color, "opacity": 0.55, "line": {"width": 0}},
                 "hovertemplate": f"{label}: %{{y}} pairs at %{{x:.3g}}<extra></extra>", "meta": {"run": run_index}}
                for values, label, color in ((chosen, "chosen", "#16a34a"), (rejected, "rejected", "#dc2626"))]
        layout = base_layout(legend=True, hovermode="x", barmode="overlay", bargap=0, height=320,
                             xaxis=axis("reward"), yaxis=axis("pairs"))
        figures.append({"id": f"dist:{run_index}:{result['name']}", "wide": False,
                        "title": f"Rewards of chosen and rejected replies: {run_name} · {result['name']}",
                        "figure": {"data": data, "layout": layout},
                        "help": "Well separated: the model ranks pairs confidently; overlapping: it often cannot tell."})
    return figures


def eval_view(evaluations: list[tuple[str, int, dict[str, Any]]], colors: list[str]) -> dict[str, Any]:
    """``{"table": [...], "figures": [...]}`` for the Evaluations tab."""
    figures = [f for f in [reliability_figure(evaluations, colors)] if f] + distribution_figures(evaluations)
    return {"table": metrics_table(evaluations), "figures": figures}
