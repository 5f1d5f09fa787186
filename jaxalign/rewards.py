"""Python reward functions at the edge of the pure core: loaded by import path,
called on decoded strings, their answers checked.

A function (``package.module:function`` or ``path/to/file.py:function``) has
TRL's ``GRPOTrainer`` reward-function signature::

    fn(prompts=[str, ...], completions=[str, ...], completion_ids=[[int, ...], ...], **columns)
        -> sequence of float or None

with one entry per completion (a prompt with ``n`` samples appears ``n``
times); ``columns`` holds the dataset row's other columns, each a list aligned
with ``prompts`` (``None`` where a row lacks the column). Each entry of the
answer is a finite number, or ``None`` for "not applicable to this row".
Anything else stops the run with a ``RewardFunctionError`` naming the
function, the prompt row (``file:line``) and what was wrong.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np

from jaxalign.plugins import PluginError, load_attribute

RewardFn = Callable[..., Sequence[float | None]]


class RewardFunctionError(ValueError):
    """The reward function could not be loaded, raised, or returned something unusable."""


def load_reward_function(spec: str) -> RewardFn:
    """``module:function`` (importable) or ``file.py:function`` -> the callable."""
    try:
        fn = load_attribute(spec, "reward function", noun="function")
    except PluginError as err:
        raise RewardFunctionError(str(err)) from err
    if not callable(fn):
        raise RewardFunctionError(f"reward function '{spec}': {spec.rpartition(':')[2]} is a {type(fn).__name__}, "
                                  "not a function")
    return fn


def call_reward_function(fn: RewardFn, spec: str, prompts: list[str], completions: list[str],
                         columns: dict[str, list[Any]], completion_ids: list[list[int]] | None = None,
                         where: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calls ``fn`` on all completions at once; returns (scores float32 ``[n]``, 0 where None;
    valid bool ``[n]``), or raises ``RewardFunctionError`` naming ``spec``, the row and the problem.

    ``where`` (one ``file:line`` per completion) names rows in errors. When the
    batched call raises, the rows are retried one at a time to name the first
    one that fails (a function that fails only on the batch is reported with
    the batch's rows)."""
    if completion_ids is None:
        completion_ids = [[] for _ in completions]
    where = list(where) if where is not None else [f"completion {i}" for i in range(len(completions))]

    def call(rows: Sequence[int]) -> Any:
        return fn(prompts=[prompts[i] for i in rows], completions=[completions[i] for i in rows],
                  completion_ids=[list(completion_ids[i]) for i in rows],
                  **{name: [values[i] for i in rows] for name, values in columns.items()})

    everything = range(len(completions))
    try:
        scores = call(everything)
    except Exception as err:
        row = _first_failing_row(call, everything)
        at = f"on prompt row {where[row]}" if row is not None else f"on the batch of rows {_span(where)}"
        raise RewardFunctionError(f"reward function '{spec}' raised {type(err).__name__}: {err} ({at})") from err
    return check_scores(scores, len(completions), spec, where)


def _first_failing_row(call: Callable[[Sequence[int]], Any], rows: Sequence[int]) -> int | None:
    for row in rows:
        try:
            call([row])
        except Exception:
            return row
    return None


def _span(where: Sequence[str]) -> str:
    return ", ".join(where) if len(where) <= 3 else f"{where[0]}, {where[1]}, ... {where[-1]} ({len(where)} rows)"


def check_scores(scores: Any, expected: int, spec: str, where: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One finite real number or None per completion -> (float32 ``[expected]`` with 0 for None,
    bool ``[expected]`` valid)."""
    source = f"reward function '{spec}'"
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise RewardFunctionError(f"{source} must return a sequence of {expected} floats (one per completion), "
                                  f"got {type(scores).__name__}")
    if isinstance(scores, np.ndarray) and scores.ndim != 1:
        raise RewardFunctionError(f"{source} returned an array of shape {scores.shape}; expected [{expected}]")
    if len(scores) != expected:
        rows = f" (batch of rows {_span(where)})" if where else ""
        raise RewardFunctionError(f"{source} returned {len(scores)} scores for {expected} completions{rows}")
    values, valid = np.zeros(expected, np.float32), np.zeros(expected, bool)
    for index, value in enumerate(scores):
        at = f" (prompt row {where[index]})" if where else ""
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise RewardFunctionError(f"{source}: score {index} is {value!r} ({type(value).__name__}), "
                                      f"not a number or None{at}")
        if not math.isfinite(float(value)):
            raise RewardFunctionError(f"{source}: score {index} is {float(value)} (scores must be finite){at}")
        values[index], valid[index] = float(value), True
    return values, valid
