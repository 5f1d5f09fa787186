"""A run's batch shapes: a fixed ladder of at most ``data.max_shapes``.

Every distinct batch shape ``(R, L, C, P)`` (``packing.batch_shape``) compiles
the train step again, several seconds each. Packing alone picks the smallest
shape that holds a batch, so a run meets dozens (54 in an epoch of HH-RLHF
DPO). The ladder bounds them: when a pipeline is built, the first batches of
the stream (up to ``SAMPLE_EXAMPLES`` examples, every process's share, so all
processes fit the same ladder) are laid out on the host, each in every way the
packer may pack it (rows of ``pack_length`` or shorter: ``packing.candidate_layouts``);
``max_shapes - 1`` levels are fitted to those shapes (``fit_ladder``: least
padding of the sample), and the last level is ``largest_shape``, which holds any
batch the config allows, so nothing is ever cut. Each batch is then packed the
way whose level costs least, and padded to that level; in a multi-process run, to
the cheapest level that holds every process's batch.

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


def fit_ladder(needs: Iterable[Sequence[Sequence[int]]], largest: Sequence[int], max_shapes: int,
               groups: int = 1, run_scale: float | None = None) -> tuple[Shape, ...]:
    """Up to ``max_shapes`` shapes, cheapest first, the last ``largest``. The others
    are picked greedily to cut the summed ``shape_cost`` of the sample ``needs``,
    each sampled batch padded to the cheapest picked shape that holds it (``groups``
    row groups). A batch may be packed several ways (``packing.candidate_layouts``,
    rows of ``pack_length`` first): its need is the list of those shapes, and the
    cheapest level holding any of them is what it costs. Candidates are every such
    shape and the elementwise maxima of every two batches' first or cheapest shapes.

    ``run_scale``: the batches the run will pack per sampled batch. With it, a
    level is added only when the padding it saves over the whole run is more
    than one sampled batch's own cost: a new shape costs a compile and a slower
    first run, which measured one to eleven steps' time (docs/data.md), so a
    short run gets fewer shapes and a long one the same as without.

    The greedy runs twice, on the batches' first shapes alone and on all of them,
    and the ladder whose padding plus compiles (each used shape one batch's cost,
    as above) is less wins: picked on all shapes, a first level that holds every
    batch in its second-best packing can shut out the two levels that hold each
    batch in its best, which costs a short run more than it saves."""
    top = tuple(int(v) for v in largest)
    # Batches with the same alternatives count once, weighted.
    weights: dict[tuple, int] = {}
    for alternatives in needs:
        shapes = np.minimum(np.asarray(alternatives, dtype=np.int64).reshape(-1, len(top)), top)
        key = tuple(map(tuple, shapes.tolist()))
        weights[key] = weights.get(key, 0) + 1
    if max_shapes <= 1 or not weights:
        return (top,)
    batches = [np.asarray(key, dtype=np.int64) for key in weights]
    counts = np.array(list(weights.values()), dtype=np.float64)
    alternatives = np.concatenate(batches)
    owner_starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
    own_costs = [np.array([shape_cost(shape, groups) for shape in b], dtype=np.float64) for b in batches]
    first = np.stack([b[0] for b in batches])
    cheapest = np.stack([b[int(np.argmin(c))] for b, c in zip(batches, own_costs)])
    pairs = [np.maximum(x[:, None, :], x[None, :, :]).reshape(-1, len(top)) for x in map(_distinct, (first, cheapest))]
    candidates = np.unique(np.concatenate([alternatives, *pairs]), axis=0)
    candidate_cost = np.array([shape_cost(c, groups) for c in candidates], dtype=np.float64)
    # holds[c, b]: candidate c holds batch b's first shape / one of its shapes.
    holds_first = np.all(candidates[:, None, :] >= first[None, :, :], axis=2)
    holds_any = np.logical_or.reduceat(np.all(candidates[:, None, :] >= alternatives[None, :, :], axis=2),
                                       owner_starts, axis=1)
    # What a level that adds a compiled shape must save over the sample: one
    # batch's own cost, spread over the run (0 without a run length).
    worth = 0.0
    if run_scale is not None:
        own_cost = np.array([c.min() for c in own_costs])
        worth = float(own_cost @ counts / counts.sum()) / max(run_scale, 1e-9)
    top_cost = float(shape_cost(top, groups))

    def levels_of(picked: list[int], holds: np.ndarray) -> np.ndarray:
        """[levels, batches]: what each batch costs on each level (inf where it does not fit)."""
        rows = [np.full(len(batches), top_cost)]
        rows += [np.where(holds[c], candidate_cost[c], np.inf) for c in picked]
        return np.stack(rows)

    def greedy(holds: np.ndarray) -> list[int]:
        picked: list[int] = []
        levels = levels_of(picked, holds)
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
            picked.append(best)
        return picked

    def padding_and_compiles(picked: list[int]) -> float:
        levels = levels_of(picked, holds_any)
        return float(levels.min(axis=0) @ counts) + worth * _used(levels)

    picked = min((greedy(holds_first), greedy(holds_any)), key=padding_and_compiles)
    ladder = {top, *(tuple(int(v) for v in candidates[c]) for c in picked)}
    return tuple(sorted(ladder, key=lambda shape: (shape_cost(shape, groups), shape)))


def _distinct(shapes: np.ndarray) -> np.ndarray:
    return np.unique(shapes, axis=0)


def _used(levels: np.ndarray) -> int:
    """How many levels some need is padded to (its cheapest holder): the shapes a run compiles."""
    return len(np.unique(np.argmin(levels, axis=0)))


def fit_shape(ladder: Sequence[Shape], need: Sequence[int]) -> Shape:
    """The cheapest level of ``ladder`` (sorted cheapest first) that holds a batch of shape ``need``."""
    for level in ladder:
        if all(want <= have for want, have in zip(need, level)):
            return level
    raise ValueError(f"a batch of shape {tuple(need)} exceeds the largest shape {ladder[-1]} the config allows")


def sample_needs(shapes_at: Callable[[int, int], list[Shape]], *, steps: int, process_count: int,
                 examples_per_step: int) -> list[list[Shape]]:
    """The shapes the first steps' batches can be packed to: ``shapes_at(step, process)``
    lists one batch's; as many steps as ``SAMPLE_EXAMPLES`` examples allow (at least one)."""
    count = min(steps, max(1, SAMPLE_EXAMPLES // max(examples_per_step, 1)))
    return [shapes_at(step, process) for step in range(count) for process in range(process_count)]
