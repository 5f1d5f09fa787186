"""``builtin:arithmetic``: a verifiable task for GRPO, generated, never downloaded.

Small sums (``a + b``, a, b in 0..19) and products (``a times b``, a, b in 0..9), asked in the
quickstart's transcript form (``"\\n\\nHuman: What is 7 + 5?\\n\\nAssistant:"``) and answered with
the bare number (``" 12"``). Every row has an ``answer`` column, which the ``exact_answer``
verifier checks; 15% of the problems are held out as the ``eval`` split.

- ``builtin:arithmetic``: ``prompt`` + ``answer`` (GRPO's prompts).
- ``builtin:arithmetic_sft``: ``prompt`` + ``completion`` (the reply " N"): for a short SFT stage
  that teaches a fresh model the answer format first (``configs/quickstart/grpo.yaml``).

The quickstart tokenizer (``builtin``) spells numbers digit by digit and knows ``+`` and ``times``.
"""

from __future__ import annotations

import functools
import random
from typing import Any

NAMES = ("arithmetic", "arithmetic_sft")
SEED = 20261203
EVAL_FRACTION = 0.15
SUM_RANGE, PRODUCT_RANGE = 20, 10


@functools.cache
def problems() -> tuple[tuple[str, int, bool], ...]:
    """(question, answer, held out) for every problem, in a fixed shuffled order."""
    items = [(f"What is {a} + {b}?", a + b) for a in range(SUM_RANGE) for b in range(SUM_RANGE)]
    items += [(f"What is {a} times {b}?", a * b) for a in range(PRODUCT_RANGE) for b in range(PRODUCT_RANGE)]
    rng = random.Random(SEED)
    rng.shuffle(items)
    held_out = round(len(items) * EVAL_FRACTION)
    return tuple((question, answer, rank < held_out) for rank, (question, answer) in enumerate(items))


def rows(name: str, split: str) -> list[dict[str, Any]]:
    chosen = [(q, a) for q, a, held_out in problems() if held_out == (split == "eval")]
    prompts = [(f"\n\nHuman: {q}\n\nAssistant:", a) for q, a in chosen]
    if name == "arithmetic_sft":
        return [{"prompt": p, "completion": f" {a}"} for p, a in prompts]
    return [{"prompt": p, "answer": str(a)} for p, a in prompts]
