"""Evaluation (``jaxalign eval``): reward models on held-out pairs (accuracy, margin,
calibration, length correlation, per category), policies on prompt sets through the rollout
layer (reward, gold reward, win rate, KL, length, truncation, task checkers), and the DPO
family's implicit reward. ``evaluate(target, spec) -> dict`` is the one entry point; see
docs/evaluation.md."""

from jaxalign.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "jaxalign.eval.api": ["evaluate"],
    "jaxalign.eval.checkers": ["checker_names", "get_checker", "register_checker"],
    "jaxalign.eval.spec": ["EvalError", "EvalSpec"],
})
