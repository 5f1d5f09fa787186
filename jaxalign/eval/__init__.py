"""Evaluation (``jaxalign eval``): reward models on held-out pairs (accuracy, margin,
calibration, length correlation, per category), policies on prompt sets through the rollout
layer (reward, gold reward, win rate, KL, length, truncation, task checkers), and the DPO
family's implicit reward. ``evaluate(target, spec) -> dict`` is the one entry point; see
docs/evaluation.md."""

from typing import TYPE_CHECKING

from jaxalign.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the exports, imported on first use (jaxalign.lazy_exports)
    from jaxalign.eval.api import evaluate
    from jaxalign.eval.checkers import checker_names, get_checker, register_checker
    from jaxalign.eval.spec import EvalError, EvalSpec

__all__ = ["EvalError", "EvalSpec", "checker_names", "evaluate", "get_checker", "register_checker"]
__getattr__, __dir__ = lazy_exports(__name__, __file__)
