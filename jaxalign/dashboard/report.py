"""``jaxalign report``: the dashboard's views as one self-contained HTML file, and as PNGs.

The HTML is the live page with plotly.js, the app and the data inlined (about 5 MB, most of
it plotly.js): it opens offline, keeps hover, zoom, the smoothing control and the run
toggles, and carries a sample of completions (the first logged step and the last three,
at most ``ROWS_PER_STEP`` rows each). PNGs are rendered by kaleido (plotly's exporter),
which drives a local Chrome or Chromium: the same figures, smoothed as the page draws them.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxalign.dashboard.downsample import ema
from jaxalign.dashboard.page import page_html
from jaxalign.dashboard.payload import build_payload, completion_rows
from jaxalign.dashboard.runs import RunSet

ROWS_PER_STEP = 100
LAST_STEPS = 3


def _completions_sample(runset: RunSet) -> dict[str, list[dict[str, Any]]]:
    """Rows by run index (a string: JSON object keys are)."""
    sample: dict[str, list[dict[str, Any]]] = {}
    for index, run in enumerate(runset.runs):
        steps = run.completion_steps()
        for step in sorted(set(steps[:1] + steps[-LAST_STEPS:])):
            sample.setdefault(str(index), []).extend(completion_rows(run, step, limit=ROWS_PER_STEP)["rows"])
    return sample


def _write_atomically(path: Path, text: str) -> None:
    """A crash leaves the old file or none, never half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_html(runset: RunSet, output: str | Path, *, smoothing: float) -> dict[str, Any]:
    """Writes the report; returns the payload it embeds."""
    payload = build_payload(runset)
    payload["completions"] = _completions_sample(runset)
    _write_atomically(Path(output), page_html(payload=payload, smoothing=smoothing, generated=time.time()))
    return payload


def smoothed_figure(figure: dict[str, Any], weight: float) -> dict[str, Any]:
    """What app.js draws at smoothing ``weight``: the raw curve faint, the smoothed one on top."""
    data = []
    path = None
    for trace in figure["data"]:
        smooth = (trace.get("meta") or {}).get("smooth")
        if weight > 0 and smooth == "y":
            base = trace["meta"].get("mean") or trace
            data += [{**trace, "opacity": 0.22, "showlegend": False},
                     {**trace, "x": base["x"], "y": ema(base["y"], weight)}]
        elif weight > 0 and smooth == "xy":
            path = {**trace, "x": ema(trace["x"], weight), "y": ema(trace["y"], weight)}
            data += [{**trace, "mode": "lines", "opacity": 0.18}, path]
        elif weight > 0 and smooth == "ends" and path is not None:
            data.append({**trace, "x": path["x"][[0, -1]], "y": path["y"][[0, -1]]})
        else:
            data.append(trace)
    return {"data": data, "layout": figure["layout"]}


def _png_figure(spec: dict[str, Any], weight: float, runs: list[dict[str, Any]]) -> tuple[dict[str, Any], int, int]:
    figure = smoothed_figure(copy.deepcopy(spec["figure"]), weight)
    shown = sorted({t["meta"]["run"] for t in figure["data"] if "run" in (t.get("meta") or {})})
    series_legend = figure["layout"].get("showlegend")
    for trace in figure["data"]:
        trace.pop("meta", None)
        trace["showlegend"] = bool(series_legend and trace.get("showlegend"))
    if len(shown) > 1 or not series_legend:
        # A picture has no run chips above it: the legend names the runs' colours.
        figure["data"] += [{"type": "scatter", "x": [None], "y": [None], "mode": "lines", "name": runs[i]["name"],
                            "line": {"color": runs[i]["color"], "width": 3}, "showlegend": True} for i in shown]
    layout = figure["layout"]
    layout.update(paper_bgcolor="#ffffff", showlegend=True,
                  title={"text": spec["title"], "x": 0.01, "y": 0.98, "yanchor": "top", "font": {"size": 15}})
    layout["margin"] = {**layout["margin"], "t": 78}
    layout["legend"] = {**layout["legend"], "y": 1.0}
    width = 1200 if spec.get("wide") else 720
    return figure, width, int(layout.get("height", 320)) + 70


def write_pngs(payload: dict[str, Any], directory: str | Path, *, smoothing: float) -> list[Path]:
    """One PNG per figure, named by its id (``reward_kl.png``, ``loss.png``, ...)."""
    import plotly.io as pio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs = [f for s in payload["sections"] for f in s["figures"]] + payload["evals"]["figures"]
    figures, paths, widths, heights = [], [], [], []
    for spec in specs:
        figure, width, height = _png_figure(spec, smoothing, payload["runs"])
        figures.append(figure)
        widths.append(width)
        heights.append(height)
        paths.append(directory / (re.sub(r"[^A-Za-z0-9_.-]+", "_", spec["id"]).strip("_") + ".png"))
    if figures:
        pio.write_images(figures, paths, width=widths, height=heights, scale=2, validate=False)
    return paths
