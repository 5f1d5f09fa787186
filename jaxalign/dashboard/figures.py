"""The charts over training steps, as figure specs: ``{"id", "title", "help", "wide", "figure"}``.

``chart_sections(runs)`` is the whole Charts tab: the RL overview first (reward and KL on one
step axis with one cursor, the reward-vs-KL trajectory of each run, proxy vs gold when a gold
reward is logged), then the panels of ``views.SECTIONS`` that any run has data for, then every
metric no panel claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from jaxalign.dashboard import names as metric_names
from jaxalign.dashboard.downsample import bucket_means, downsample
from jaxalign.dashboard.plotting import (
    DASHES, as_json_floats, axis, base_layout, event_shapes, event_track, line_trace, stacked_domains, step_axis,
)
from jaxalign.dashboard.views import GOLD, KL, REWARD, SECTIONS, Panel

WIDE_POINTS = 1200  # per curve, on a full-width chart
SMALL_POINTS = 500  # per curve, on a half-width chart
TRAJECTORY_POINTS = 300


@dataclass
class RunData:
    """What the figures need of one run: ``frame`` is ``[steps, metrics]`` indexed by step."""

    index: int
    name: str
    color: str
    frame: pd.DataFrame
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        present = [c for c in self.frame.columns if c != "time" and self.frame[c].notna().any()]
        self.columns: dict[tuple[str, str], str] = {metric_names.split_name(c): c for c in present}

    def names(self, split: str) -> list[str]:
        return [name for (s, name) in self.columns if s == split]

    def curve(self, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values where the metric was logged ``([n], [n])``."""
        values = self.frame[self.columns[(split, name)]]
        values = values[values.notna()]
        return values.index.to_numpy(), values.to_numpy()


def _series(runs: list[RunData], quantity: str, split: str) -> list[tuple[RunData, str, str]]:
    """``(run, metric name, label)`` for every series of ``quantity`` the runs log in ``split``."""
    return [(run, name, label) for run in runs for name, label in metric_names.resolve(quantity, run.names(split))]


def _curves(runs: list[RunData], quantities: tuple[str, ...], points: int, **trace_options: Any) -> list[dict]:
    """Traces of ``quantities`` for every run, train solid (a dash per series) and eval dotted."""
    traces, labels = [], []
    for quantity in quantities:
        for split in metric_names.SPLITS:
            for run, name, label in _series(runs, quantity, split):
                shown = label if split == "train" else f"{label} (eval)"
                if shown not in labels:
                    labels.append(shown)
                steps, values = run.curve(split, name)
                x, y = downsample(steps, values, points)
                first_of_label = not any(t["name"] == shown for t in traces)
                trace = line_trace(
                    x, y, run=run.index, label=shown, hover_name=f"{run.name} · {shown}", color=run.color,
                    dash=DASHES[labels.index(shown) % len(DASHES)], eval_split=split == "eval",
                    showlegend=first_of_label, **trace_options)
                if len(x) < len(steps) and split == "train":
                    # Smoothing the min/max points would smooth the noise's envelope: the page
                    # smooths bucket means instead (the faint raw curve keeps the extremes).
                    mean_x, mean_y = bucket_means([steps, values], points)
                    trace["meta"]["mean"] = {"x": mean_x, "y": as_json_floats(mean_y)}
                traces.append(trace)
    return traces


def _events(runs: list[RunData]) -> list[dict]:
    return [shape for run in runs for shape in event_shapes(run.events, run.color)]


def _spec(key: str, title: str, figure: dict, help: str = "", wide: bool = False) -> dict[str, Any]:
    return {"id": key, "title": title, "help": help, "wide": wide, "figure": figure}


def reward_kl_figure(runs: list[RunData]) -> dict[str, Any] | None:
    """Reward (and gold reward) above KL, one step axis: hovering one panel shows all of them.
    Under them a strip with a lane per run marks its checkpoints and evals."""
    rows = [(q, t) for q, t in ((REWARD, "reward"), (GOLD, "gold reward"), (KL, "KL to reference"))
            if any(_series(runs, q, s) for s in metric_names.SPLITS)]
    if not any(q == REWARD for q, _ in rows) or not any(q == KL for q, _ in rows):
        return None
    events = [(run, trace) for run in runs
              for trace in event_track(run.events, run=run.index, lane=run.index, color=run.color, yaxis="y9")]
    track = min(0.03 + 0.008 * len(runs), 0.12) if events else 0.0
    layout = base_layout(legend=False, hoversubplots="axis", shapes=_events(runs), height=170 * len(rows) + 60)
    data = []
    for row, ((quantity, title), domain) in enumerate(zip(rows, stacked_domains(len(rows)))):
        yname = "y" if row == 0 else f"y{row + 1}"
        layout["yaxis" if row == 0 else f"yaxis{row + 1}"] = axis(title, domain=[track * 1.6 + domain[0] * (
            1 - track * 1.6), track * 1.6 + domain[1] * (1 - track * 1.6)])
        data += _curves(runs, (quantity,), WIDE_POINTS, yaxis=yname)
    if events:
        layout["yaxis9"] = axis(domain=[0, track], range=[-0.7, len(runs) - 0.3], showticklabels=False,
                                showgrid=False, ticks="", fixedrange=True)
        data += [trace for _, trace in events]
    layout["xaxis"] = step_axis(anchor="y9" if events else f"y{len(rows)}")
    return _spec("reward_kl", "Reward and KL", {"data": data, "layout": layout}, wide=True, help=(
        "Reward rising while KL grows modestly is learning; KL running away while the reward flattens "
        "(or the gold reward falls) is the policy exploiting the reward: read its replies in Completions."))


def _trajectory(run: RunData, y_quantity: str, xaxis: str, yaxis: str, label: str) -> list[dict]:
    names = {q: metric_names.resolve(q, run.names("train")) for q in (KL, y_quantity)}
    if not names[KL] or not names[y_quantity]:
        return []
    columns = [run.columns[("train", names[q][0][0])] for q in (KL, y_quantity)]
    both = run.frame[columns].dropna()
    steps, kl, reward = bucket_means(
        [both.index.to_numpy(), both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()], TRAJECTORY_POINTS)
    hover = f"{run.name}<br>step %{{text:.0f}}<br>KL %{{x:.4g}}<br>{label} %{{y:.4g}}<extra></extra>"
    common = {"type": "scatter", "xaxis": xaxis, "yaxis": yaxis, "legendgroup": run.name, "showlegend": False}
    path = {**common, "x": kl, "y": reward, "text": steps, "mode": "lines+markers", "name": run.name,
            "line": {"color": run.color, "width": 1.6}, "marker": {"size": 3, "color": run.color},
            "hovertemplate": hover, "meta": {"run": run.index, "smooth": "xy"}}
    ends = {**common, "x": kl[[0, -1]], "y": reward[[0, -1]], "mode": "markers", "hoverinfo": "skip",
            "marker": {"size": [8, 11], "color": ["#ffffff", run.color], "symbol": ["circle", "circle"],
                       "line": {"color": run.color, "width": 2}}, "meta": {"run": run.index, "smooth": "ends"}}
    return [path, ends]


def trajectory_figure(runs: list[RunData]) -> dict[str, Any] | None:
    """Reward against KL, one path per run (open circle: start, filled: latest); with a gold
    reward a second panel below draws gold against KL, where over-optimisation bends down."""
    has_gold = any(metric_names.resolve(GOLD, run.names("train")) for run in runs)
    panels = [(REWARD, "reward")] + ([(GOLD, "gold reward")] if has_gold else [])
    data = []
    layout = base_layout(legend=False, hovermode="closest", height=570 if has_gold else 420)
    for row, ((quantity, label), domain) in enumerate(zip(panels, stacked_domains(len(panels), gap=0.12))):
        suffix = "" if row == 0 else str(row + 1)
        layout[f"xaxis{suffix}"] = axis("KL to reference", anchor=f"y{suffix}", **({"matches": "x"} if row else {}))
        layout[f"yaxis{suffix}"] = axis(label, anchor=f"x{suffix}", domain=domain)
        for run in runs:
            data += _trajectory(run, quantity, f"x{suffix}", f"y{suffix}", label)
    if not data:
        return None
    return _spec("trajectory", "Reward against KL" + (": proxy and gold" if has_gold else ""),
                 {"data": data, "layout": layout}, help=(
                     "Each run's path from its start (open circle) to now (filled). Runs of a kl_coef sweep "
                     "trace the frontier of reward bought per unit of KL; a gold curve that turns down while "
                     "the proxy still climbs is reward over-optimisation."))


def panel_figure(panel: Panel, runs: list[RunData]) -> dict[str, Any] | None:
    data = _curves(runs, panel.quantities, SMALL_POINTS)
    if not data:
        return None
    if not panel.smooth:
        for trace in data:
            trace["meta"]["smooth"] = ""
    legend = len({t["name"] for t in data}) > 1
    yaxis = axis(type="log") if panel.log_y else axis()
    layout = base_layout(legend=legend, xaxis=step_axis(), yaxis=yaxis, shapes=_events(runs),
                         height=300)
    return _spec(panel.key, panel.title, {"data": data, "layout": layout}, help=panel.help)


def claimed_names(runs: list[RunData]) -> set[str]:
    """Metric names (without split) that some view draws."""
    quantities = {REWARD, GOLD, KL} | {q for s in SECTIONS for p in s.panels for q in p.quantities}
    return {name for run in runs for split in metric_names.SPLITS for q in quantities
            for name, _ in metric_names.resolve(q, run.names(split))}


def other_figures(runs: list[RunData]) -> list[dict[str, Any]]:
    claimed = claimed_names(runs)
    others = sorted({name for run in runs for (_, name) in run.columns} - claimed)
    return [f for f in (panel_figure(Panel(f"other:{name}", name, (name,)), runs) for name in others) if f]


def chart_sections(runs: list[RunData]) -> list[dict[str, Any]]:
    """The Charts tab: ``[{"title", "figures": [spec, ...], "collapsed"}]``, empty sections left out."""
    overview = [f for f in (reward_kl_figure(runs), trajectory_figure(runs)) if f]
    sections = [{"title": "RL: reward and KL", "figures": overview, "collapsed": False, "layout": "overview"}
                ] if overview else []
    for section in SECTIONS:
        figures = [f for f in (panel_figure(p, runs) for p in section.panels) if f]
        if figures:
            sections.append({"title": section.title, "figures": figures, "collapsed": False})
    others = other_figures(runs)
    if others:
        sections.append({"title": "Other metrics", "figures": others, "collapsed": True})
    return sections
