"""Rule-based verifiers: small registered reward functions built from YAML options.

A verifier is a factory ``make(**options) -> reward function`` (TRL's
signature, see ``jaxalign.rewards``), registered with ``@register_verifier``.
In YAML: ``{verifier: NAME, weight: 1.0, **options}``.

Built in:

- ``exact_answer``: extracts the answer from the completion with a regular
  expression (its first group when it has one; the last match wins, so a
  reply may think before it answers) and compares it with the row's
  ``column`` (default ``answer``): ``correct`` (1.0) or ``wrong`` (0.0); None
  for rows without that column. Compared as numbers when both parse as
  numbers, else as stripped strings (``ignore_case`` optional).
- ``format``: ``matched`` (1.0) when the completion matches ``pattern``
  (``re.search``, or the whole completion with ``full_match``), else
  ``unmatched`` (0.0).
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

from jaxalign.rewards import RewardFn
from jaxalign.rl.sources import FunctionSource, RewardSpec, SourceContext, register_reward_source

VerifierFactory = Callable[..., RewardFn]
_VERIFIERS: dict[str, VerifierFactory] = {}


def register_verifier(name: str) -> Callable[[VerifierFactory], VerifierFactory]:
    """Decorator registering ``make(**options) -> fn(prompts, completions, **columns)`` as ``name``."""
    def decorate(factory: VerifierFactory) -> VerifierFactory:
        _VERIFIERS[name] = factory
        return factory

    return decorate


def verifier_names() -> tuple[str, ...]:
    return tuple(sorted(_VERIFIERS))


def make_verifier(name: str, **options: Any) -> RewardFn:
    """The reward function of verifier ``name`` with ``options``; unknown names and options are errors."""
    if name not in _VERIFIERS:
        raise ValueError(f"unknown verifier '{name}'; registered: {', '.join(verifier_names())}")
    factory = _VERIFIERS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"verifier '{name}': unknown option(s) {', '.join(unknown)}; "
                         f"options: {', '.join(accepted) or 'none'}")
    return factory(**options)


@register_reward_source("verifier")
def _verifier_source(spec: RewardSpec, context: SourceContext) -> FunctionSource:
    fn = make_verifier(spec.target, **spec.options)
    return FunctionSource(fn, spec.name or spec.target, f"verifier:{spec.target}")


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _compile(pattern: str, option: str, verifier: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"verifier '{verifier}': option {option} is not a valid regular expression: {err}") from err


@register_verifier("exact_answer")
def exact_answer(column: str = "answer", pattern: str | None = r"(-?\d[\d,]*(?:\.\d+)?)", correct: float = 1.0,
                 wrong: float = 0.0, ignore_case: bool = False) -> RewardFn:
    """Default pattern: the last number in the completion. ``pattern: null`` compares the whole
    stripped completion."""
    regex = None if pattern is None else _compile(pattern, "pattern", "exact_answer")

    def extract(text: str) -> str | None:
        if regex is None:
            return text.strip()
        matches = list(regex.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if regex.groups else last.group(0)).strip()

    def same(found: str, expected: Any) -> bool:
        expected = str(expected).strip()
        a, b = _as_number(found), _as_number(expected)
        if a is not None and b is not None:
            return a == b
        return found.lower() == expected.lower() if ignore_case else found == expected

    def exact_answer_reward(prompts, completions, **columns) -> list[float | None]:
        answers = columns.get(column) or [None] * len(completions)
        scores: list[float | None] = []
        for text, expected in zip(completions, answers):
            if expected is None:
                scores.append(None)
                continue
            found = extract(text)
            scores.append(correct if found is not None and same(found, expected) else wrong)
        return scores

    return exact_answer_reward


@register_verifier("format")
def format_check(pattern: str, full_match: bool = False, matched: float = 1.0, unmatched: float = 0.0) -> RewardFn:
    regex = _compile(pattern, "pattern", "format")
    match = regex.fullmatch if full_match else regex.search

    def format_reward(prompts, completions, **columns) -> list[float]:
        return [matched if match(text.strip() if full_match else text) else unmatched for text in completions]

    return format_reward


@register_verifier("soft_overlong")
def soft_overlong(max_length: int, cache: int) -> RewardFn:
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 for replies of at most
    ``max_length - cache`` tokens, then falling linearly to -1 at ``max_length`` (and -1 beyond).
    Length = the reply's tokens including its stop token. Scale it with the source's weight."""
    if not 0 < cache < max_length:
        raise ValueError(f"verifier 'soft_overlong': need 0 < cache < max_length, got cache {cache}, "
                         f"max_length {max_length}")
    free = max_length - cache

    def soft_overlong_reward(prompts, completions, completion_ids=None, **columns) -> list[float]:
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [0] * len(completions)
        return [0.0 if n <= free else max(-1.0, (free - n) / cache) for n in lengths]

    return soft_overlong_reward
