"""A run's batch shapes: a fixed ladder of at most ``data.max_shapes``.

Every distinct batch shape ``(R, L, C, P)`` (``packing.batch_shape``) compiles
the train step again, several seconds each. Packing alone picks the smallest
shape that holds a batch, so a run meets dozens (54 in an epoch of HH-RLHF
DPO). The ladder bounds them: when a pipeline is built, the first batches of
the stream (up to ``SAMPLE_EXAMPLES`` examples, every process's share, so all
processes fit the same ladder) are packed on the host; their shapes give
``max_shapes - 1`` levels, the per-dimension quantiles ``1/(n-1) .. 1`` of the
sample, and the last level is ``largest_shape``, which holds any batch the
config allows, so nothing is ever cut. The fitted levels minimise the padding
of the sample (``fit_ladder``); each batch is padded to the first level that
holds it.

The levels grow in every dimension, so the largest of two levels is a level:
the multi-process shape agreement (elementwise maximum) keeps a run on its
ladder. The ladder depends only on the config and the data, so a resumed run
pads exactly as the first one did. ``largest_shape`` is also what
``jaxalign.plan`` budgets memory for.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from jaxalign.data.packing import bucket_rows, round_up

Shape = tuple[int, int, int, int]
# Host-side packing at start-up: about 1 s per 1,000 HH-RLHF pairs on one core.
SAMPLE_EXAMPLES = 1024


def largest_shape(
    *, slots: int, pack_length: int, longest_example: int, pad_to_multiple: int, row_multiple: int = 1,
    attention_tile: int | None = None, targets: bool = True,
) -> Shape:
    """The packed shape ``(R, L, C, P)`` that holds any batch of ``slots`` examples
    of at most ``longest_example`` tokens: every example in a row of its own, rows of
    ``pack_length`` (or the longest example, rounded up, when that is longer), every
    token a target, every causal tile pair visible."""
    rows = bucket_rows(slots, row_multiple)
    length = pack_length if pack_length >= longest_example else round_up(longest_example, pad_to_multiple)
    width = round_up(length, pad_to_multiple) if targets else 0
    pairs = 0
    if attention_tile and length % attention_tile == 0:
        tiles = length // attention_tile
        pairs = round_up(tiles * (tiles + 1) // 2, tiles)
    return rows, length, width, pairs


def shape_cost(shape: Sequence[int]) -> int:
    """What padding a batch to ``shape`` costs, in positions: decoder positions ``R * L``
    plus vocabulary-projection positions ``R * C``."""
    rows, length, width = shape[0], shape[1], shape[2]
    return rows * (length + width)


def fit_ladder(needs: Iterable[Sequence[int]], largest: Sequence[int], max_shapes: int) -> tuple[Shape, ...]:
    """Up to ``max_shapes`` shapes, each at least the one before in every dimension,
    the last ``largest``. The others minimise the summed ``shape_cost`` of the
    sample ``needs`` (the smallest shapes of sample batches) padded to their level:
    needs sorted by cost are cut into runs, each run's level the elementwise maximum
    of every need up to its end (so levels grow in every dimension); the cuts come
    from an exact dynamic programme over the distinct needs."""
    top = tuple(int(v) for v in largest)
    sample = np.minimum(np.asarray(list(needs), dtype=np.int64).reshape(-1, len(top)), top)
    levels: list[Shape] = []
    if max_shapes > 1 and len(sample):
        distinct, counts = np.unique(sample, axis=0, return_counts=True)
        order = sorted(range(len(distinct)), key=lambda i: (shape_cost(distinct[i]), tuple(distinct[i])))
        distinct, counts = distinct[order], counts[order]
        prefix_max = np.maximum.accumulate(distinct, axis=0)
        level_cost = np.array([shape_cost(level) for level in prefix_max], dtype=np.float64)
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        n, runs = len(distinct), min(max_shapes - 1, len(distinct))
        # best[g][j]: least cost of covering the first j needs with g runs; cut[g][j]: where the last run starts.
        best = np.full((runs + 1, n + 1), np.inf)
        cut = np.zeros((runs + 1, n + 1), dtype=np.int64)
        best[0][0] = 0.0
        for g in range(1, runs + 1):
            for j in range(1, n + 1):
                starts = np.arange(j)
                totals = best[g - 1][:j] + (cumulative[j] - cumulative[starts]) * level_cost[j - 1]
                cut[g][j] = int(np.argmin(totals))
                best[g][j] = totals[cut[g][j]]
        g = int(np.argmin(best[:, n]))
        ends, j = [], n
        while g > 0:
            ends.append(j)
            j, g = cut[g][j], g - 1
        levels = [tuple(int(v) for v in prefix_max[end - 1]) for end in sorted(ends)]
    if not levels or levels[-1] != top:
        levels.append(top)
    return tuple(levels)


def fit_shape(ladder: Sequence[Shape], need: Sequence[int]) -> Shape:
    """The first level of ``ladder`` that holds a batch of shape ``need``."""
    for level in ladder:
        if all(want <= have for want, have in zip(need, level)):
            return level
    raise ValueError(f"a batch of shape {tuple(need)} exceeds the largest shape {ladder[-1]} the config allows")


def sample_needs(batch_at: Callable[[int, int], dict[str, np.ndarray]], shape_of: Callable[[dict], Shape],
                 *, steps: int, process_count: int, examples_per_step: int) -> list[Shape]:
    """Shapes of the first steps' batches: ``batch_at(step, process)`` packs one;
    as many steps as ``SAMPLE_EXAMPLES`` examples allow (at least one)."""
    count = min(steps, max(1, SAMPLE_EXAMPLES // max(examples_per_step, 1)))
    return [shape_of(batch_at(step, process)) for step in range(count) for process in range(process_count)]
