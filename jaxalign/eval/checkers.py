"""Task checkers: rule-based scorers of a policy's replies, registered by name.

A checker is ``fn(rows, completions) -> {metric: float}`` where ``rows`` are the prompts'
dataset rows (dicts with ``prompt`` and the row's other columns) and ``completions`` the
replies, one per row (a prompt with n replies appears n times). Its metrics are reported
under its name (``alignment/decline_rate``)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from jaxalign.eval.spec import EvalError

Checker = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], Mapping[str, float]]
_CHECKERS: dict[str, Checker] = {}


def register_checker(name: str) -> Callable[[Checker], Checker]:
    """Decorator registering a task checker under ``name``."""
    def decorate(fn: Checker) -> Checker:
        _CHECKERS[name] = fn
        return fn

    return decorate


def get_checker(name: str) -> Checker:
    if name not in _CHECKERS and ":" in name:  # module:function, imported on demand
        from jaxalign.rewards import load_reward_function

        return load_reward_function(name)
    if name not in _CHECKERS:
        raise EvalError(f"eval.checkers: unknown checker {name!r}; registered: {', '.join(sorted(_CHECKERS))} "
                        f"(or give module:function)")
    return _CHECKERS[name]


def checker_names() -> tuple[str, ...]:
    return tuple(sorted(_CHECKERS))


@register_checker("alignment")
def alignment(rows: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> dict[str, float]:
    """The built-in alignment task (jaxalign.tasks.alignment.task_metrics): ``decline_rate`` on
    harmful prompts, ``help_rate`` and ``over_refusal_rate`` on benign ones, ``gold``, and per category."""
    from jaxalign.tasks.alignment import task_metrics

    try:
        return task_metrics(list(rows), list(completions))
    except ValueError as err:
        raise EvalError(f"eval.checkers[alignment]: {err}") from None
