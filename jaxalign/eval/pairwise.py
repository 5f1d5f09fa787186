"""Evaluations on held-out preference pairs: a reward model's accuracy and calibration, and the
DPO family's implicit reward beta x (log pi(y|x) - log pi_ref(y|x)).

Pairs are tokenized as training tokenizes them (``eval.data.tokenize_pairs``) and scored in
batches of ``spec.batch_size`` pairs, so memory does not grow with the set."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from jaxalign.eval import stats
from jaxalign.eval.data import EvalSet, pair_batches, tokenize_pairs
from jaxalign.eval.models import Loaded, reply_logps_fn, reply_scores_fn
from jaxalign.eval.spec import EvalSpec

MAX_PAIR_LENGTH = 1024


def _per_reply(pairs_set: EvalSet, model: Loaded, spec: EvalSpec,
               score: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(chosen values ``[K]``, rejected values ``[K]``, chosen lengths, rejected lengths) of ``score``
    over the pairs, in tokens of ``model``'s tokenizer."""
    limit = min(MAX_PAIR_LENGTH, int(getattr(model.config, "max_position_embeddings", MAX_PAIR_LENGTH)))
    pairs = tokenize_pairs(pairs_set.examples, model.tokenizer, limit)
    chosen, rejected = [], []
    for count, arrays in pair_batches(pairs, spec.batch_size):
        values = np.asarray(score(**arrays), np.float64)
        half = len(values) // 2
        chosen.append(values[:count])
        rejected.append(values[half:half + count])
    lengths = np.array([[len(pair.completions[0]), len(pair.completions[1])] for pair in pairs], np.float64)
    return np.concatenate(chosen), np.concatenate(rejected), lengths[:, 0], lengths[:, 1]


def _by_category(correct: np.ndarray, rows: Sequence[dict], column: str, name: str) -> dict[str, float]:
    categories = [row.get(column) for row in rows]
    out = {}
    for category in sorted({c for c in categories if c is not None}, key=str):
        members = np.array([c == category for c in categories])
        out[f"{name}/{category}"] = float(correct[members].mean())
    return out


def reward_model_eval(reward_model: Loaded, pairs_set: EvalSet, spec: EvalSpec) -> dict[str, Any]:
    """Accuracy (ties count half), mean margin, ECE and its reliability table, reward-length
    correlation (Pearson over every chosen and rejected reply, length in tokens), accuracy per
    ``spec.category_column``; the result also keeps every reply's reward for histograms."""
    score = reply_scores_fn(reward_model.graphdef)
    chosen, rejected, chosen_len, rejected_len = _per_reply(
        pairs_set, reward_model, spec, lambda **a: score(reward_model.params, **a))
    margins = chosen - rejected
    correct = stats.win_outcomes(chosen, rejected)
    table, ece = stats.reliability(margins, spec.bins)
    metrics = {"accuracy": float(correct.mean()), "margin": float(margins.mean()), "ece": ece,
               "reward_length_corr": stats.pearson(np.concatenate([chosen, rejected]),
                                                   np.concatenate([chosen_len, rejected_len])),
               "chosen_reward": float(chosen.mean()), "rejected_reward": float(rejected.mean()),
               "pairs": float(len(margins))}
    metrics.update(_by_category(correct, pairs_set.rows, spec.category_column, "accuracy"))
    return {"kind": "reward_model", "metrics": metrics, "reliability": table,
            "chosen_rewards": chosen.tolist(), "rejected_rewards": rejected.tolist()}


def implicit_reward_eval(policy: Loaded, reference: Loaded, pairs_set: EvalSet, spec: EvalSpec,
                         beta: float) -> dict[str, Any]:
    """The DPO family's implicit reward r = beta x (log pi(y|x) - log pi_ref(y|x)) of each reply, in
    TRL's names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` (chosen > rejected;
    ties count half), ``rewards/margins``, plus accuracy per category. The reference must share
    the policy's tokenizer (its log-probs are of the same tokens)."""
    policy_logps, reference_logps = reply_logps_fn(policy.graphdef), reply_logps_fn(reference.graphdef)

    def implicit(**arrays):
        return beta * (np.asarray(policy_logps(policy.params, **arrays), np.float64)
                       - np.asarray(reference_logps(reference.params, **arrays), np.float64))

    chosen, rejected, _, _ = _per_reply(pairs_set, policy, spec, implicit)
    correct = stats.win_outcomes(chosen, rejected)
    metrics = {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
               "rewards/accuracies": float(correct.mean()), "rewards/margins": float((chosen - rejected).mean()),
               "beta": float(beta), "pairs": float(len(chosen))}
    metrics.update(_by_category(correct, pairs_set.rows, spec.category_column, "rewards/accuracies"))
    return {"kind": "implicit_reward", "metrics": metrics, "chosen_rewards": chosen.tolist(),
            "rejected_rewards": rejected.tolist()}
