"""Verifiable number tasks for GRPO, generated, never downloaded.

- ``builtin:compare``: which of two digits is larger (or smaller):
  ``"What is the larger of 3 and 7?"`` -> ``" 7"``. A rule a small model can learn and apply to
  pairs it never saw, so held-out accuracy measures learning, not memory (the quickstart's task).
- ``builtin:arithmetic``: single-digit sums (``a + b``) and products (``a times b``): a lookup
  table; held-out problems test memory of the commuted pair at best.

Both are asked in the quickstart's transcript form (``"\\n\\nHuman: ...?\\n\\nAssistant:"``) and
answered with the bare number (``" 12"``). Every row has an ``answer`` column, which the
``exact_answer`` verifier checks; 15% of the problems are held out as the ``eval`` split. Each
has an ``_sft`` twin (``prompt`` + ``completion``, the reply " N") for a short SFT stage that
teaches a fresh model the answer format first (``configs/quickstart/grpo_sft.yaml``).

The quickstart tokenizer (``builtin``) spells numbers digit by digit and knows ``+`` and ``times``.
"""

from __future__ import annotations

import functools
import random
from typing import Any

NAMES = ("arithmetic", "arithmetic_sft", "compare", "compare_sft")
SEED = 20261203
EVAL_FRACTION = 0.15
SUM_RANGE, PRODUCT_RANGE = 10, 10


@functools.cache
def comparisons() -> tuple[tuple[str, int], ...]:
    """(question, answer): every ordered pair of distinct digits, larger or smaller asked (180), shuffled."""
    items = [(f"What is the {word} of {a} and {b}?", max(a, b) if word == "larger" else min(a, b))
             for word in ("larger", "smaller") for a in range(10) for b in range(10) if a != b]
    random.Random(SEED + 1).shuffle(items)
    return tuple(items)


@functools.cache
def problems(task: str = "arithmetic") -> tuple[tuple[str, int, bool], ...]:
    """(question, answer, held out) for every problem of ``task``, in a fixed shuffled order."""
    if task == "compare":
        items = list(comparisons())
        held_out = round(len(items) * EVAL_FRACTION)
        return tuple((question, answer, rank < held_out) for rank, (question, answer) in enumerate(items))
    items = [(f"What is {a} + {b}?", a + b) for a in range(SUM_RANGE) for b in range(SUM_RANGE)]
    items += [(f"What is {a} times {b}?", a * b) for a in range(PRODUCT_RANGE) for b in range(PRODUCT_RANGE)]
    rng = random.Random(SEED)
    rng.shuffle(items)
    held_out = round(len(items) * EVAL_FRACTION)
    return tuple((question, answer, rank < held_out) for rank, (question, answer) in enumerate(items))


def rows(name: str, split: str) -> list[dict[str, Any]]:
    chosen = [(q, a) for q, a, held_out in problems(name.removesuffix("_sft")) if held_out == (split == "eval")]
    prompts = [(f"\n\nHuman: {q}\n\nAssistant:", a) for q, a in chosen]
    if name.endswith("_sft"):
        return [{"prompt": p, "completion": f" {a}"} for p, a in prompts]
    return [{"prompt": p, "answer": str(a)} for p, a in prompts]
