"""Statistics of an evaluation: means with standard errors, win rates, calibration.

Pure numpy over host arrays. Standard errors treat prompts (not replies) as the
independent units: the n replies to one prompt are correlated, so per-reply
values are first averaged per prompt (``group``) and the SE is that of the
mean over prompts.
"""

from __future__ import annotations

import numpy as np


def mean_and_se(values: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float]:
    """(mean of ``values`` ``[K]``, its standard error). With ``groups`` ``[K]`` the SE is over
    per-group means (each group weighted by its size, so the mean is the plain mean of values)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if groups is None:
        groups = np.arange(values.size)
    keys, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    group_means = np.bincount(inverse, weights=values) / sizes
    mean = float(values.mean())
    if len(keys) < 2:
        return mean, float("nan")
    weights = sizes / sizes.sum()
    # SE of a ratio estimator over clusters: sqrt(sum w_g^2 (m_g - mean)^2 * G / (G - 1)).
    variance = np.sum(weights ** 2 * (group_means - mean) ** 2) * len(keys) / (len(keys) - 1)
    return mean, float(np.sqrt(variance))


def win_outcomes(policy_scores: np.ndarray, reference_scores: np.ndarray) -> np.ndarray:
    """Per pair of replies: 1 where the policy's scores higher, 0.5 for a tie, 0 otherwise."""
    policy_scores, reference_scores = np.asarray(policy_scores), np.asarray(reference_scores)
    return np.where(policy_scores > reference_scores, 1.0, np.where(policy_scores == reference_scores, 0.5, 0.0))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no linear relation to measure)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def reliability(margins: np.ndarray, bins: int = 10) -> tuple[dict[str, list], float]:
    """Calibration of Bradley-Terry probabilities from reward margins ``r_chosen - r_rejected`` ``[K]``.

    Each pair is counted in both orders: predicted P(first preferred) = sigmoid(margin) with
    outcome 1, and 1 - sigmoid(margin) with outcome 0 (the observed frequency of "chosen wins"
    is 1 by construction otherwise). Returns (table, ECE): per non-empty bin of the predicted
    probability on [0, 1], its mean prediction, the observed share of first-preferred and the
    count; ECE = sum over bins of count / total x |observed - predicted|."""
    p = sigmoid(margins)
    predicted = np.concatenate([p, 1 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    index = np.minimum((predicted * bins).astype(int), bins - 1)
    table: dict[str, list] = {"predicted": [], "observed": [], "count": [], "low": [], "high": []}
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if not count:
            continue
        mean_p, observed = float(predicted[members].mean()), float(outcome[members].mean())
        table["predicted"].append(mean_p)
        table["observed"].append(observed)
        table["count"].append(count)
        table["low"].append(b / bins)
        table["high"].append((b + 1) / bins)
        ece += count / predicted.size * abs(observed - mean_p)
    return table, float(ece)
