"""Fewer points for the browser: a chart is ~1,000 pixels wide, a run can log 100,000 steps.

Curves over steps use MinMaxLTTB (tsdownsample: min/max preselection then largest-triangle
buckets), which keeps spikes (a NaN-free loss spike stays visible) at about 1 ms per 100k points.
Trajectories (reward against KL) are averaged over buckets of consecutive steps instead: a path
through noise is unreadable, its running mean is the point of the plot.
"""

from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

_LTTB = MinMaxLTTBDownsampler()


def downsample(x: np.ndarray, y: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n_out`` points of the curve ``(x [n], y [n])``, first and last kept; x sorted."""
    if len(x) <= n_out:
        return x, y
    index = _LTTB.downsample(np.ascontiguousarray(x), np.ascontiguousarray(y), n_out=n_out).astype(np.int64)
    return x[index], y[index]


def bucket_means(columns: list[np.ndarray], n_out: int) -> list[np.ndarray]:
    """Each ``[n]`` column averaged over ``n_out`` buckets of consecutive rows (unchanged if short)."""
    n = len(columns[0])
    if n <= n_out:
        return columns
    edges = np.linspace(0, n, n_out + 1).astype(np.int64)
    counts = np.diff(edges)
    return [np.add.reduceat(column.astype(np.float64), edges[:-1]) / counts for column in columns]


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (``weight`` 0 = raw); NaN stays NaN.

    The browser applies the same formula to what it draws (app.js ``smoothed``); this copy is
    for the PNG figures of ``jaxalign report``.
    """
    finite = values[np.isfinite(values)]
    if weight <= 0 or not len(finite) or np.all(finite == finite[0]):  # a constant stays exact
        return values
    out = np.empty_like(values, dtype=np.float64)
    last, count = 0.0, 0
    for index, value in enumerate(values):
        if not np.isfinite(value):
            out[index] = np.nan
            continue
        last, count = last * weight + (1 - weight) * value, count + 1
        out[index] = last / (1 - weight**count)
    return out
