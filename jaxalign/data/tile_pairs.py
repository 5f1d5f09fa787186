"""Which (query tile, key tile) pairs of a packed row hold a visible attention score.

The block-sparse attention (``jaxalign.models.tiled_attention``) computes only
these pairs. Packing lays each example out contiguously, ``[prompt | reply 1 |
reply 2 ...]``, and ``jaxalign.batch.attention_mask`` lets a token see the
earlier tokens of its own example's prompt and of its own reply. So an example
is a few *spans*, each a run of keys and the run of queries that see them:

* the prompt's keys, seen by every query of the example from the prompt on;
* each reply's keys, seen by that reply's queries only;

always causally (key <= query). A tile pair is visible when some query of the
span's query run in the query tile comes at or after some key of its key run in
the key tile: the last such query against the first such key. That is interval
arithmetic on a few tiles, not a mask of the example's length squared, so the
packer can price several packings of a batch (``packing.pack_layouts``) quickly.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np


class Span(NamedTuple):
    """Keys ``[key_start, key_stop)`` seen (causally) by queries ``[query_start, query_stop)`` of a row."""

    key_start: int
    key_stop: int
    query_start: int
    query_stop: int


def example_spans(start: int, prompt_length: int, reply_lengths: Iterable[int]) -> list[Span]:
    """The spans of an example whose prompt starts at row position ``start``."""
    prompt_stop = start + prompt_length
    replies = list(reply_lengths)
    spans = [Span(start, prompt_stop, start, prompt_stop + sum(replies))]
    begin = prompt_stop
    for length in replies:
        spans.append(Span(begin, begin + length, begin, begin + length))
        begin += length
    return spans


def visible_tiles(spans: Iterable[Span], num_tiles: int, tile: int) -> np.ndarray:
    """Boolean ``[num_tiles, num_tiles]`` (query tile, key tile): the pairs holding a visible score."""
    visible = np.zeros((num_tiles, num_tiles), bool)
    for span in spans:
        if span.key_stop <= span.key_start or span.query_stop <= span.query_start:
            continue
        query_tiles = np.arange(span.query_start // tile, (span.query_stop - 1) // tile + 1)
        key_tiles = np.arange(span.key_start // tile, (span.key_stop - 1) // tile + 1)
        last_query = np.minimum((query_tiles + 1) * tile, span.query_stop) - 1
        first_key = np.maximum(key_tiles * tile, span.key_start)
        visible[query_tiles[0]:query_tiles[-1] + 1, key_tiles[0]:key_tiles[-1] + 1] |= (
            last_query[:, None] >= first_key[None, :])
    return visible


def tile_pairs_of_rows(row_spans: Sequence[Iterable[Span]], rows: int, length: int, tile: int) -> np.ndarray:
    """int32 ``[rows, P, 2]``: each row's visible pairs sorted (query tile, then key tile), -1 in
    unused slots (and in rows past ``row_spans``); P is the most pairs in a row, rounded up to a
    multiple of ``length / tile`` so a run meets few distinct shapes."""
    num_tiles = length // tile
    visible = [np.argwhere(visible_tiles(spans, num_tiles, tile)) for spans in row_spans]
    count = -(-max(max((len(pairs) for pairs in visible), default=0), 1) // num_tiles) * num_tiles
    tile_pairs = np.full((rows, count, 2), -1, np.int32)
    for r, pairs in enumerate(visible):
        tile_pairs[r, : len(pairs)] = pairs
    return tile_pairs


def attention_tile_pairs(segment_ids: np.ndarray, branch_ids: np.ndarray, tile: int) -> np.ndarray:
    """The visible (query tile, key tile) pairs of packed rows, as ``tile_pairs_of_rows`` gives them.

    segment_ids, branch_ids ``[R, L]`` with L a multiple of ``tile``, laid out as the packer
    does (each example contiguous, its prompt (branch 0) first, then each reply in one run)
    -> int32 ``[R, P, 2]``.
    """
    rows, length = segment_ids.shape
    row_spans = []
    for segments, branches in zip(segment_ids, branch_ids):
        spans = []
        # Runs of one (segment, branch); a prompt run's queries reach the end of its segment.
        change = np.flatnonzero((np.diff(segments) != 0) | (np.diff(branches) != 0)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [length]])
        segment_stop = {}
        for start, stop in zip(starts, stops):
            if segments[start]:
                segment_stop[segments[start]] = stop
        for start, stop in zip(starts.tolist(), stops.tolist()):
            segment = segments[start]
            if not segment:
                continue
            query_stop = segment_stop[segment] if branches[start] == 0 else stop
            spans.append(Span(start, stop, start, query_stop))
        row_spans.append(spans)
    return tile_pairs_of_rows(row_spans, rows, length, tile)
