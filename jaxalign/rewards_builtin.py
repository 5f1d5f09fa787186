"""A transparent reward for the PPO quickstart on ``builtin:preferences`` prompts.

``helpful_harmless`` scores a reply by its vocabulary: words that the
built-in data uses only in *good* replies (declining harmful requests, or
helping with benign ones) count +1, words used only in *bad* replies
(complying with harmful requests, or being rude) count -1; the score is the
sum divided by the reply's word count (at least ``MIN_WORDS``, so that a
one-word reply cannot score 1), so it lies in [-1, 1]. With the row's
``category`` column (the built-in rows have one) the lexicon follows the
request: on a harmful request, declining words score, on a benign one,
helping words do. It is a toy: it reads words, not meaning, but it is dense
enough that a small random policy visibly learns it within a few minutes on a CPU.

Use it with ``ppo.reward_function: jaxalign.rewards_builtin:helpful_harmless``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

from jaxalign.data import builtin_templates as T

MIN_WORDS = 8
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def _words(texts: Sequence[str]) -> set[str]:
    return {word for text in texts for word in WORD.findall(text.lower())}


@functools.cache
def lexicons() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """(good words, bad words) for harmful requests, benign requests, and either."""
    decline = list(T.DECLINE_OPENERS) + [s for spec in T.HARMFUL.values() for s in spec["reasons"] + spec["offers"]]
    comply = list(T.COMPLY_OPENERS) + [s for spec in T.HARMFUL.values() for s in spec["comply"]]
    helpful = list(T.HELP_OPENERS) + list(T.HELP_CLOSINGS) + [
        s for spec in T.BENIGN.values() for s in spec["answers"].values()]
    rude = list(T.RUDE_REPLIES) + [s for spec in T.BENIGN.values() for s in spec["rude"]]

    def split(good: list[str], bad: list[str]) -> tuple[frozenset[str], frozenset[str]]:
        good_words, bad_words = _words(good), _words(bad)
        return frozenset(good_words - bad_words), frozenset(bad_words - good_words)

    return {"harmful": split(decline, comply), "benign": split(helpful, rude),
            "any": split(decline + helpful, comply + rude)}


def reply_score(reply: str, family: str = "any") -> float:
    """(good words - bad words) / max(words, MIN_WORDS) of ``reply`` for ``family``
    ("harmful", "benign" or "any")."""
    good, bad = lexicons()[family]
    words = WORD.findall(reply.lower())
    if not words:
        return 0.0
    return (sum(word in good for word in words) - sum(word in bad for word in words)) / max(len(words), MIN_WORDS)


def helpful_harmless(prompts: list[str], completions: list[str], category: list[Any] | None = None,
                     **columns: Any) -> list[float]:
    """One score in [-1, 1] per completion (see the module docstring)."""
    categories = category or [None] * len(completions)
    families = ["harmful" if c in T.HARMFUL else "benign" if c in T.BENIGN else "any" for c in categories]
    return [reply_score(reply, family) for reply, family in zip(completions, families)]
