"""Reading compiled HLO text in tests: what crosses devices."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

_COLLECTIVE = re.compile(
    r"= (.*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")
_ARRAY = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")


class Collective(NamedTuple):
    kind: str  # all-gather, all-reduce, all-to-all, collective-permute or reduce-scatter
    elements: int  # over every array it returns (a tuple's too)
    shapes: tuple[tuple[int, ...], ...]
    op_name: str  # the jax operation it came from (``op_name`` metadata), "?" without one


def collectives(hlo: str) -> list[Collective]:
    """Every collective in compiled HLO text (``compiled.as_text()``)."""
    found = []
    for line in hlo.splitlines():
        match = _COLLECTIVE.search(line)
        if match:
            shapes = tuple(tuple(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(match.group(1)))
            origin = re.search(r'op_name="([^"]*)"', line)
            found.append(Collective(match.group(2), sum(math.prod(s) for s in shapes), shapes,
                                    origin.group(1) if origin else "?"))
    return found
