"""Inter-annotator statistics for ``jaxalign data stats``: pairwise Cohen's kappa,
Krippendorff's alpha, each annotator's agreement with the majority and, for
ratings, their calibration against the others.

Krippendorff's alpha comes from the ``krippendorff`` package. Cohen's kappa
is the few lines below rather than scikit-learn's ``cohen_kappa_score``:
scikit-learn would be a large dependency for one formula.
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any, Sequence

import numpy as np

from jaxalign.data.annotators import Votes, agreement_table

MIN_SHARED = 5  # items two annotators must share for a pairwise kappa


def cohen_kappa(first: Sequence[float], second: Sequence[float], quadratic: bool = False) -> float:
    """Cohen's kappa of two raters' labels on the same items (quadratic-weighted for
    ordinal ratings): ``1 - sum(W * observed) / sum(W * expected)``. nan when undefined."""
    categories = sorted(set(first) | set(second))
    if len(categories) < 2:
        return math.nan
    index = {value: i for i, value in enumerate(categories)}
    observed = np.zeros((len(categories), len(categories)))
    for a, b in zip(first, second):
        observed[index[a], index[b]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    positions = np.arange(len(categories))
    if quadratic:
        values = np.asarray(categories, np.float64)
        weights = (values[:, None] - values[None, :]) ** 2
    else:
        weights = (positions[:, None] != positions[None, :]).astype(np.float64)
    disagreement = float((weights * expected).sum())
    return math.nan if disagreement == 0 else 1.0 - float((weights * observed).sum()) / disagreement


def pairwise_kappa(votes: Votes, numeric: bool) -> dict[str, dict[str, float]]:
    """``{"a|b": {"kappa": k, "items": n}}`` for annotators sharing at least ``MIN_SHARED`` items."""
    shared: dict[tuple[str, str], list[tuple[float, float]]] = collections.defaultdict(list)
    for by_annotator in votes.values():
        for a, b in itertools.combinations(sorted(by_annotator), 2):
            shared[(a, b)].append((by_annotator[a], by_annotator[b]))
    out = {}
    for (a, b), pairs in sorted(shared.items()):
        if len(pairs) >= MIN_SHARED:
            first, second = zip(*pairs)
            out[f"{a}|{b}"] = {"kappa": _finite(cohen_kappa(first, second, quadratic=numeric)), "items": len(pairs)}
    return out


def krippendorff_alpha(votes: Votes, numeric: bool) -> float | None:
    """Krippendorff's alpha over items judged by two or more annotators (ordinal for
    ratings, nominal otherwise); None when fewer than two such items."""
    import krippendorff

    items = [by_annotator for by_annotator in votes.values() if len(by_annotator) >= 2]
    if len(items) < 2:
        return None
    annotators = sorted({name for by_annotator in items for name in by_annotator})
    matrix = np.full((len(annotators), len(items)), np.nan)
    for column, by_annotator in enumerate(items):
        for name, vote in by_annotator.items():
            matrix[annotators.index(name), column] = vote
    if len(np.unique(matrix[~np.isnan(matrix)])) < 2:
        return None  # one value everywhere: alpha is undefined
    return _finite(float(krippendorff.alpha(reliability_data=matrix,
                                            level_of_measurement="ordinal" if numeric else "nominal")))


def calibration(votes: Votes) -> dict[str, dict[str, float]]:
    """For ratings: each annotator's ``offset`` (mean of their rating minus the mean of
    the others' on the same item) and ``spread`` (standard deviation of their ratings
    over that of the others' item means; 1 = the same spread), over shared items."""
    own: dict[str, list[float]] = collections.defaultdict(list)
    others: dict[str, list[float]] = collections.defaultdict(list)
    for by_annotator in votes.values():
        for name, vote in by_annotator.items():
            rest = [v for who, v in by_annotator.items() if who != name]
            if rest:
                own[name].append(vote)
                others[name].append(float(np.mean(rest)))
    out = {}
    for name in sorted(own):
        mine, theirs = np.asarray(own[name]), np.asarray(others[name])
        spread = mine.std() / theirs.std() if theirs.std() > 0 else math.nan
        out[name] = {"offset": float(np.mean(mine - theirs)), "spread": _finite(float(spread)), "items": len(mine)}
    return out


def annotator_section(votes: Votes, numeric: bool) -> dict[str, Any]:
    """The ``annotators`` section of the statistics."""
    table = agreement_table(votes, numeric)
    section: dict[str, Any] = {
        "count": len(table),
        "votes": "ratings" if numeric else "pairwise choices",
        "agreement": {name: {"labels": row.labels, "compared": row.compared, "agreement": _finite(row.agreement),
                             "kappa": _finite(row.kappa), "reliability": row.reliability}
                      for name, row in table.items()},
        "kappa_pairwise": pairwise_kappa(votes, numeric),
        "krippendorff_alpha": krippendorff_alpha(votes, numeric),
        "alpha_level": "ordinal" if numeric else "nominal",
    }
    if numeric:
        section["calibration"] = calibration(votes)
    return section


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined statistics are null."""
    return None if value is None or math.isnan(value) else value
