"""Plotly figure pieces as plain dicts (plotly.js's JSON schema), shared by every view.

Plain dicts, not ``plotly.graph_objects``: the server rebuilds figures on every data change
and graph_objects' validation costs more than the rest of the work; the schema is the same.
Every trace carries ``meta``: ``run`` (index, so the page can hide a run), ``smooth``
(``"y"`` or ``"xy"``: which coordinates the page's smoothing control applies to) and, for a
downsampled curve, ``mean`` (``{"x", "y"}`` bucket means: what smoothing starts from).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777",
           "#4b5563", "#65a30d")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
GRID = "#e8ebf0"
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#1f2937"}


def run_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def as_json_floats(values: np.ndarray) -> np.ndarray:
    # float32 halves the JSON (shortest repr) and is finer than a chart can show.
    return np.asarray(values, dtype=np.float32)


def line_trace(x: np.ndarray, y: np.ndarray, *, run: int, label: str, hover_name: str, color: str,
               dash: str = "solid", eval_split: bool = False, yaxis: str = "y", xaxis: str = "x",
               showlegend: bool = False) -> dict[str, Any]:
    """One curve over steps; eval points are drawn as markers joined by a thin dotted line."""
    trace = {
        "type": "scatter", "x": np.asarray(x), "y": as_json_floats(y), "name": label,
        "mode": "lines+markers" if eval_split else "lines",
        "line": {"color": color, "width": 1.2 if eval_split else 1.8, "dash": "dot" if eval_split else dash},
        "legendgroup": label, "showlegend": showlegend, "xaxis": xaxis, "yaxis": yaxis,
        "hovertemplate": f"{hover_name}: %{{y:.4g}}<extra></extra>",
        "meta": {"run": run, "smooth": "" if eval_split else "y"},
    }
    if eval_split:
        trace["marker"] = {"size": 6, "color": color, "symbol": "diamond"}
    return trace


def axis(title: str = "", **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "standoff": 6}, "gridcolor": GRID, "zeroline": False,
            "linecolor": "#cbd2dc", "ticks": "outside", "tickcolor": "#cbd2dc", "automargin": True, **extra}


def step_axis(**extra: Any) -> dict[str, Any]:
    """The x axis of every chart over steps: a spike line is the cursor shared by its panels."""
    return axis("step", showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1,
                spikecolor="#6b7280", spikedash="dot", unifiedhovertitle={"text": "step %{x}"}, **extra)


def base_layout(*, legend: bool, hovermode: str = "x unified", **extra: Any) -> dict[str, Any]:
    return {
        "font": FONT, "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "#ffffff",
        "margin": {"l": 56, "r": 16, "t": 8, "b": 40}, "hovermode": hovermode,
        "hoverlabel": {"bgcolor": "rgba(255,255,255,0.95)", "bordercolor": "#cbd2dc", "font": {"size": 11}},
        "showlegend": legend,
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom", "font": {"size": 11}},
        # Keeps the user's zoom and hidden traces when live data replaces the figure.
        "uirevision": "keep",
        **extra,
    }


def stacked_domains(rows: int, gap: float = 0.07) -> list[list[float]]:
    """Y domains of ``rows`` panels stacked top to bottom on one x axis."""
    height = (1 - gap * (rows - 1)) / rows
    return [[1 - (i + 1) * height - i * gap, 1 - i * height - i * gap] for i in range(rows)]


_EVENT_LINES = {"resume": ("dash", 1.2), "stop": ("dot", 1.2), "error": ("solid", 1.6)}
_EVENT_MARKERS = {"checkpoint": "line-ns", "eval": "diamond"}
MAX_MARKERS_PER_KIND = 300


def _event_steps(events: list[dict[str, Any]], kind: str) -> list[float]:
    return [e["step"] for e in events if e.get("kind") == kind and isinstance(e.get("step"), (int, float))]


def event_shapes(events: list[dict[str, Any]], color: str) -> list[dict[str, Any]]:
    """Full-height lines where a run resumed, stopped or failed (rare, so shapes are cheap)."""
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step, "y0": 0, "y1": 1,
             "line": {"color": "#dc2626" if kind == "error" else color, "width": width, "dash": dash},
             "opacity": 0.8, "layer": "above"}
            for kind, (dash, width) in _EVENT_LINES.items() for step in _event_steps(events, kind)]


def event_track(events: list[dict[str, Any]], *, run: int, lane: int, color: str, yaxis: str) -> list[dict[str, Any]]:
    """Checkpoints (ticks) and evals (diamonds) of one run on its lane of a thin strip under a
    chart: frequent events as markers of one trace, not one shape each (hundreds of shapes
    cost plotly seconds to draw)."""
    traces = []
    for kind, symbol in _EVENT_MARKERS.items():
        steps = _event_steps(events, kind)
        steps = steps[:: max(1, len(steps) // MAX_MARKERS_PER_KIND)]
        if steps:
            traces.append({"type": "scatter", "mode": "markers", "x": steps, "y": [lane] * len(steps), "yaxis": yaxis,
                           "name": kind, "showlegend": False, "hoverinfo": "skip", "meta": {"run": run},
                           "marker": {"symbol": symbol, "size": 9 if kind == "checkpoint" else 6, "color": color,
                                      "line": {"color": color, "width": 1.5}}})
    return traces
