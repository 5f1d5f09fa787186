"""Ratings -> the numbers pointwise reward models train on.

Each rated reply gets two batch columns (``data.columns``):

* ``rating``: the rating mapped linearly from the declared scale
  ``data.rating_scale`` = [lo, hi] onto [-1, 1], ``2 (r - lo) / (hi - lo) - 1``
  (``rating_regression``'s target);
* ``rating_level``: the level index ``round(r) - lo`` in 0..K-1, K = hi - lo + 1
  (``ordinal``'s class).

With ``data.rating_normalization: per_annotator`` each annotator's ratings are
first mapped onto the pool's mean and spread, ``r' = m + (r - m_a) s / s_a``
(m, s: mean and standard deviation of all ratings of the split; m_a, s_a: the
annotator's), and clipped to the scale, so a harsh or a generous annotator
means the same by the same number. Annotators with one rating, or all alike,
are only shifted.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxalign.data.columns import RATING, RATING_LEVEL
from jaxalign.data.example import TextExample
from jaxalign.data.report import source_of


def levels(scale: Sequence[float]) -> int:
    """K, the number of integer levels of the scale [lo, hi]."""
    return int(round(scale[1] - scale[0])) + 1


def calibration(examples: Sequence[TextExample]) -> dict[str | None, tuple[float, float]]:
    """``{annotator: (shift, stretch)}`` so that ``m + (r - shift) * stretch`` maps their
    ratings onto the pool's mean and spread (examples without an annotator: identity)."""
    ratings = np.array([ex.rating for ex in examples if ex.rating is not None], np.float64)
    pool_mean, pool_std = float(ratings.mean()), float(ratings.std())
    by_annotator: dict[str | None, list[float]] = {}
    for example in examples:
        if example.rating is not None:
            by_annotator.setdefault(example.annotator, []).append(example.rating)
    out = {}
    for annotator, values in by_annotator.items():
        own = np.asarray(values)
        stretch = pool_std / own.std() if annotator is not None and own.std() > 0 else 1.0
        out[annotator] = (float(own.mean()) if annotator is not None else pool_mean, stretch)
    out[None] = (pool_mean, 1.0)
    return out


def normalise(examples: list[TextExample], scale: Sequence[float] | None, method: str) -> list[TextExample]:
    """Adds ``rating`` and ``rating_level`` columns to every rated example."""
    if not any(example.rating is not None for example in examples):
        return examples
    if scale is None:
        raise ValueError(f"data: {source_of(examples[0].where)} holds ratings; declare their scale as "
                         "data.rating_scale: [lowest, highest] (e.g. [1, 5])")
    lo, hi = scale
    pool_mean = float(np.mean([ex.rating for ex in examples if ex.rating is not None]))
    calibrated = calibration(examples) if method == "per_annotator" else {}
    out = []
    for example in examples:
        if example.rating is None:
            out.append(example)
            continue
        rating = example.rating
        if example.annotator in calibrated:
            shift, stretch = calibrated[example.annotator]
            rating = float(np.clip(pool_mean + (rating - shift) * stretch, lo, hi))
        level = int(np.clip(round(rating - lo), 0, levels(scale) - 1))
        columns = {**example.columns, RATING: 2.0 * (rating - lo) / (hi - lo) - 1.0, RATING_LEVEL: float(level)}
        out.append(dataclasses.replace(example, columns=columns, rating=rating))  # agreement sees calibrated ratings
    return out
