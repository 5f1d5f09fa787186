"""A run's batch shapes: a fixed ladder of at most ``data.max_shapes``.

Every distinct batch shape ``(R, L, C, P)`` (``packing.batch_shape``) compiles
the train step again, several seconds each. Packing alone picks the smallest
shape that holds a batch, so a run meets dozens (54 in an epoch of HH-RLHF
DPO). The ladder bounds them: when a pipeline is built, the first batches of
the stream (up to ``SAMPLE_EXAMPLES`` examples, every process's share, so all
processes fit the same ladder; no more batches than a train run reads) are laid
out on the host, each in every way the packer may pack it (rows of
``pack_length`` or shorter: ``packing.candidate_layouts``);
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

from jaxalign.data.config import DataConfig
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
               groups: int = 1, run_scale: float | None = None,
               compile_cost: float = DataConfig.compile_cost_batches) -> tuple[Shape, ...]:
    """Up to ``max_shapes`` shapes, cheapest first, the last ``largest``. The others
    are picked greedily to cut the summed ``shape_cost`` of the sample ``needs``,
    each sampled batch padded to the cheapest picked shape that holds it (``groups``
    row groups). A batch may be packed several ways (``packing.candidate_layouts``,
    rows of ``pack_length`` first): its need is the list of those shapes, and the
    cheapest level holding any of them is what it costs. Candidates are every such
    shape and the elementwise maxima of every two batches' first or cheapest shapes.

    ``run_scale``: the batches the run will pack per sampled batch. With it, a
    level is added only when the padding it saves over the whole run is more
    than ``compile_cost`` sampled batches' own cost: a new shape costs a
    compile and a slower first run (docs/data.md), so a short run gets fewer
    shapes and a long one the same as without.

    The greedy runs twice: as if every batch were packed in rows of ``pack_length``
    (its first shape: the ladder the packer had when it could not choose), and over
    every packing. The ladder whose padding plus compiles (a used shape costs the
    ``run_scale`` threshold above) is less wins, so the choice never costs the sample
    more than rows of ``pack_length`` did. Neither greedy wins always: over every
    packing, a first level that holds each batch in its second-best packing can
    shut out the two levels that hold them in their best (a short run on HH-RLHF)."""
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
    def worth(own_cost: np.ndarray) -> float:
        """What a level that adds a compiled shape must save over the sample: a compile's
        worth of batches' own cost, spread over the run (0 without a run length)."""
        if run_scale is None:
            return 0.0
        return compile_cost * float(own_cost @ counts / counts.sum()) / max(run_scale, 1e-9)

    worth_first, worth_any = worth(np.array([c[0] for c in own_costs])), worth(np.array([c.min() for c in own_costs]))
    top_cost = float(shape_cost(top, groups))

    def fit(candidates: np.ndarray, greedy_on: np.ndarray | None = None,
            threshold: float = worth_any) -> tuple[float, list[Shape]]:
        """Greedy levels among ``candidates`` (chosen as if candidate c held batch b where
        ``greedy_on[c, b]``; default: where it holds any of b's shapes; a new compiled shape
        must save ``threshold``), and what the sample then pays in padding and compiles, each
        batch packed its cheapest way."""
        cost = np.array([shape_cost(c, groups) for c in candidates], dtype=np.float64)
        holds_any = np.logical_or.reduceat(np.all(candidates[:, None, :] >= alternatives[None, :, :], axis=2),
                                           owner_starts, axis=1)
        holds = holds_any if greedy_on is None else greedy_on
        # levels[l, b]: what batch b costs on picked level l (inf where it does not fit);
        # a batch is padded to its cheapest level.
        levels = np.full((1, len(batches)), top_cost)
        picked: list[int] = []
        for _ in range(max_shapes - 1):
            paid = levels.min(axis=0)
            totals = np.minimum(paid[None, :], np.where(holds, cost[:, None], np.inf)) @ counts
            best = int(np.argmin(totals))
            grown = np.concatenate([levels, np.where(holds[best], cost[best], np.inf)[None, :]])
            # A level that takes over all of another's batches adds no compile, so it need only save.
            adds_a_shape = _used(grown) > _used(levels)
            if paid @ counts - totals[best] <= (threshold if adds_a_shape else 0.0):
                break
            levels = grown
            picked.append(best)
        paid_levels = np.concatenate([np.full((1, len(batches)), top_cost)]
                                     + [np.where(holds_any[c], cost[c], np.inf)[None, :] for c in picked])
        price = float(paid_levels.min(axis=0) @ counts) + worth_any * _used(paid_levels)
        return price, [tuple(int(v) for v in candidates[c]) for c in picked]

    first_candidates = np.unique(np.concatenate([first, _pairwise_maxima(first)]), axis=0)
    by_first = fit(first_candidates, np.all(first_candidates[:, None, :] >= first[None, :, :], axis=2), worth_first)
    by_every = fit(np.unique(np.concatenate([alternatives, _pairwise_maxima(first), _pairwise_maxima(cheapest)]), axis=0))
    _, picked = min(by_first, by_every, key=lambda fitted: fitted[0])
    return tuple(sorted({top, *picked}, key=lambda shape: (shape_cost(shape, groups), shape)))


def _pairwise_maxima(shapes: np.ndarray) -> np.ndarray:
    distinct = np.unique(shapes, axis=0)
    return np.maximum(distinct[:, None, :], distinct[None, :, :]).reshape(-1, shapes.shape[1])


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
