"""PPO's rewards at the edge of the pure core: a Python function named in YAML,
loaded and called on decoded strings, its answer checked.

The function (``ppo.reward_function: package.module:function`` or
``path/to/file.py:function``) is called once per rollout as::

    fn(prompts=[str, ...], completions=[str, ...], **columns) -> sequence of floats

with one entry per real (non-padding) prompt of the batch; ``columns`` holds
the dataset row's other columns (everything but ``prompt``), each a list
aligned with ``prompts`` (``None`` where a row lacks the column). It must
return one finite number per completion. Anything else stops the run with a
``RewardFunctionError`` naming the function and what was wrong.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np

from jaxalign.plugins import PluginError, load_attribute

RewardFn = Callable[..., Sequence[float]]


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
                         columns: dict[str, list[Any]]) -> np.ndarray:
    """Calls ``fn`` and returns its scores as float32 ``[len(completions)]``, or raises
    ``RewardFunctionError`` naming ``spec`` and the problem."""
    try:
        scores = fn(prompts=prompts, completions=completions, **columns)
    except Exception as err:
        raise RewardFunctionError(f"reward function '{spec}' raised {type(err).__name__}: {err}") from err
    return check_scores(scores, len(completions), spec)


def check_scores(scores: Any, expected: int, spec: str) -> np.ndarray:
    """One finite real number per completion, as float32 ``[expected]``."""
    where = f"reward function '{spec}'"
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise RewardFunctionError(f"{where} must return a sequence of {expected} floats (one per completion), "
                                  f"got {type(scores).__name__}")
    if isinstance(scores, np.ndarray) and scores.ndim != 1:
        raise RewardFunctionError(f"{where} returned an array of shape {scores.shape}; expected [{expected}]")
    if len(scores) != expected:
        raise RewardFunctionError(f"{where} returned {len(scores)} scores for {expected} completions")
    values = np.empty(expected, np.float32)
    for index, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardFunctionError(f"{where}: score {index} is {value!r} ({type(value).__name__}), not a number")
        if not math.isfinite(float(value)):
            raise RewardFunctionError(f"{where}: score {index} is {float(value)} (scores must be finite)")
        values[index] = float(value)
    return values


RESERVED = ("prompt", "prompts", "completions")  # the prompt itself, and the function's own argument names


class RowColumns:
    """The dataset rows behind a split's prompts, looked up by example id, so a
    reward function sees each row's other columns."""

    def __init__(self, examples: Sequence[Any], rows: Sequence[Any]):
        by_where = {row.where: row.value for row in rows if isinstance(row.value, dict)}
        self._rows = [by_where.get(example.where, {}) for example in examples]
        self._prompts = [example.prompt for example in examples]
        self.names = sorted({name for row in self._rows for name in row if name not in RESERVED})

    def batch(self, example_ids: Sequence[int]) -> tuple[list[str], dict[str, list[Any]]]:
        """(prompt texts, {column: values}) for the given example ids."""
        prompts = [self._prompts[i] for i in example_ids]
        columns = {name: [self._rows[i].get(name) for i in example_ids] for name in self.names}
        return prompts, columns
