"""A run's batch shapes: a fixed ladder of at most ``data.max_shapes``.

Every distinct batch shape ``(R, L, C, P)`` (``packing.batch_shape``) compiles
the train step again, several seconds each. Packing alone picks the smallest
shape that holds a batch, so a run meets dozens (54 in an epoch of HH-RLHF
DPO). The ladder bounds them: when a pipeline is built, the first batches of
the stream (up to ``SAMPLE_EXAMPLES`` examples, every process's share, so all
processes fit the same ladder) are packed on the host; ``max_shapes - 1``
levels are fitted to their shapes (``fit_ladder``: least padding of the
sample), and the last level is ``largest_shape``, which holds any batch the
config allows, so nothing is ever cut. Each batch is padded to the cheapest
level that holds it; in a multi-process run, to the cheapest level that holds
every process's batch.

The ladder depends only on the config and the data, so a resumed run pads
exactly as the first one did. ``largest_shape`` is also what ``jaxalign.plan``
budgets memory for.
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
    token a target (C counts a row group's targets: ``row_multiple`` groups), every causal tile pair visible."""
    rows = bucket_rows(slots, row_multiple)
    length = pack_length if pack_length >= longest_example else round_up(longest_example, pad_to_multiple)
    width = round_up(rows // row_multiple * length, pad_to_multiple) if targets else 0  # targets per row group
    pairs = 0
    if attention_tile and length % attention_tile == 0:
        tiles = length // attention_tile
        pairs = round_up(tiles * (tiles + 1) // 2, tiles)
    return rows, length, width, pairs


def shape_cost(shape: Sequence[int], groups: int = 1) -> int:
    """What padding a batch to ``shape`` costs, in positions: decoder positions ``R * L``
    plus vocabulary-projection positions ``G * C`` (G row groups)."""
    rows, length, width = shape[0], shape[1], shape[2]
    return rows * length + groups * width


def fit_ladder(needs: Iterable[Sequence[int]], largest: Sequence[int], max_shapes: int,
               groups: int = 1, run_scale: float | None = None) -> tuple[Shape, ...]:
    """Up to ``max_shapes`` shapes, cheapest first, the last ``largest``. The others
    are picked greedily to cut the summed ``shape_cost`` of the sample ``needs``
    (the smallest shapes of sample batches, ``groups`` row groups), each need padded to the cheapest
    picked shape that holds it; candidates are the needs and the elementwise
    maxima of every two of them.

    ``run_scale``: the batches the run will pack per sampled batch. With it, a
    level is added only when the padding it saves over the whole run is more
    than one sampled batch's own cost: a new shape costs a compile and a slower
    first run, which measured one to eleven steps' time (docs/data.md), so a
    short run gets fewer shapes and a long one the same as without."""
    top = tuple(int(v) for v in largest)
    sample = np.minimum(np.asarray(list(needs), dtype=np.int64).reshape(-1, len(top)), top)
    picked: list[Shape] = [top]
    if max_shapes > 1 and len(sample):
        distinct, counts = np.unique(sample, axis=0, return_counts=True)
        pairs = np.maximum(distinct[:, None, :], distinct[None, :, :]).reshape(-1, len(top))
        candidates = np.unique(np.concatenate([distinct, pairs]), axis=0)
        candidate_cost = np.array([shape_cost(c, groups) for c in candidates], dtype=np.float64)
        # holds[c, n]: candidate c holds need n.
        holds = np.all(candidates[:, None, :] >= distinct[None, :, :], axis=2)
        # levels[l, n]: what need n costs on picked level l (inf where it does not fit);
        # a need is padded to its cheapest level.
        levels = np.full((1, len(distinct)), float(shape_cost(top, groups)))
        # What a level that adds a compiled shape must save over the sample: one
        # batch's own cost, spread over the run (0 without a run length).
        worth = 0.0
        if run_scale is not None:
            own_cost = np.array([shape_cost(need, groups) for need in distinct], dtype=np.float64)
            worth = float(own_cost @ counts / counts.sum()) / max(run_scale, 1e-9)
        for _ in range(max_shapes - 1):
            paid = levels.min(axis=0)
            totals = np.minimum(paid[None, :], np.where(holds, candidate_cost[:, None], np.inf)) @ counts
            best = int(np.argmin(totals))
            grown = np.concatenate([levels, np.where(holds[best], candidate_cost[best], np.inf)[None, :]])
            # A level that takes over all of another's batches adds no compile, so it need only save.
            adds_a_shape = _used(grown) > _used(levels)
            if paid @ counts - totals[best] <= (worth if adds_a_shape else 0.0):
                break
            levels = grown
            picked.append(tuple(int(v) for v in candidates[best]))
    return tuple(sorted(set(picked), key=lambda shape: (shape_cost(shape, groups), shape)))


def _used(levels: np.ndarray) -> int:
    """How many levels some need is padded to (its cheapest holder): the shapes a run compiles."""
    return len(np.unique(np.argmin(levels, axis=0)))


def fit_shape(ladder: Sequence[Shape], need: Sequence[int]) -> Shape:
    """The cheapest level of ``ladder`` (sorted cheapest first) that holds a batch of shape ``need``."""
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
