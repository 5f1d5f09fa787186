"""Tokenized examples -> the packed arrays of ``jaxalign/batch.py``, and back.

Each example is laid out contiguously, ``[prompt | chosen | rejected]`` for a
pair (branch ids 0/1/2) and ``[prompt | completion]`` otherwise (branch 1);
examples are placed first-fit-decreasing into rows of ``pack_length`` tokens,
never split across rows. Shapes are bucketed so a run compiles few of them:

* K (example slots a row) = the number of examples a batch holds, fixed;
* L = longest used row rounded up to ``pad_to_multiple``, capped at
  ``pack_length`` (an example longer than that gets a row of its own);
* C (target slots a row group) = most targets in a row group, rounded up
  likewise: targets are flat per group of rows (one group per data-parallel
  shard, ``row_multiple`` groups), so the vocabulary projection runs on the
  completion tokens plus the rounding, not on every row's longest list;
* R = rows used, rounded up to ``row_multiple * u`` (``row_multiple``: the
  data-parallel shards of this process) with u of at most three significant
  bits (1-8, 10, 12, 14, 16, 20, 24, ...; ``bucket_rows``);
* P (attention tile pairs a row, when ``attention_tile`` is given) = the
  most visible tile pairs in a row, rounded up to a multiple of L / tile.

Everything here is pure numpy, and ``unpack`` inverts ``pack_examples`` (it
checks positions and targets while doing so) for tests.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from jaxalign.data.columns import EXAMPLE_COLUMNS
from jaxalign.data.tile_pairs import example_spans, tile_pairs_of_rows
from jaxalign.data.tokenize import TokenizedExample

LENGTH_KEYS = ("input_ids", "positions", "segment_ids", "branch_ids")
# Row lengths ``candidate_layouts`` tries at most: every ``pad_to_multiple`` from ``pack_length``
# down to the longest example, or every few, so a small multiple or long rows stay cheap.
MAX_ROW_LENGTHS = 32
TARGET_KEYS = ("target_index", "target_ids", "target_segment", "target_branch", "target_row")


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, longest examples placed first, each into the
    first bin with room; an example longer than ``capacity`` gets its own bin."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = lengths[index]
        target = next((b for b, free in enumerate(room) if free >= length), None)
        if target is None:
            bins.append([])
            room.append(max(capacity, length))
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= length
    return bins


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bucket_rows(rows: int, row_multiple: int) -> int:
    """The smallest ``row_multiple * u >= rows`` (u >= 1) whose u has at most three
    significant bits: 1-8, 10, 12, 14, 16, 20, 24, 28, 32, ... Four sizes an
    octave bound the padding rows by 25% (powers of two alone cost up to 2x;
    on HH-RLHF this cuts 11% of the slots with no extra compiled shapes)."""
    units = max(1, -(-rows // row_multiple))
    step = 1 << max(0, units.bit_length() - 3)
    return row_multiple * round_up(units, step)


def _targets(example: TokenizedExample, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(target_index, target_ids, target_branch)`` arrays of an example whose
    prompt starts at row position ``start``."""
    prompt_end = start + len(example.prompt)  # first position after the prompt
    indices, ids, branches = [], [], []
    if example.prompt_loss:
        indices.append(np.arange(start, prompt_end - 1))
        ids.append(example.prompt[1:])
        branches.append(np.ones(len(example.prompt) - 1, np.int32))
    offset = prompt_end
    for branch, (tokens, mask) in enumerate(zip(example.completions, example.loss_masks), start=1):
        picked = np.flatnonzero(mask)
        # The first token of every branch is predicted by the last prompt token.
        indices.append(np.where(picked == 0, prompt_end - 1, offset + picked - 1))
        ids.append(tokens[picked])
        branches.append(np.full(len(picked), branch, np.int32))
        offset += len(tokens)
    return np.concatenate(indices), np.concatenate(ids), np.concatenate(branches)


def _target_count(example: TokenizedExample) -> int:
    prompt_targets = len(example.prompt) - 1 if example.prompt_loss else 0
    return prompt_targets + sum(int(mask.sum()) for mask in example.loss_masks)


class Layout(NamedTuple):
    """Where a batch's examples go, and the packed shape that follows (no arrays yet)."""

    bins: list[list[int]]  # example indices of each used row, in row order
    shape: tuple[int, int, int, int]  # (R, L, C, P) as ``batch_shape`` reads it from the arrays
    tile_pairs: np.ndarray | None  # int32 [R, P, 2] when the rows are tiled (tile_pairs.py)


def layout_rows(
    examples: Sequence[TokenizedExample], bins: list[list[int]], *, pack_length: int, pad_to_multiple: int,
    row_multiple: int, attention_tile: int | None, targets: bool,
) -> Layout:
    """The layout of ``examples`` placed row by row as ``bins`` says."""
    row_lengths = [sum(examples[i].length for i in members) for members in bins]
    longest = max(row_lengths, default=1)
    length = round_up(longest, pad_to_multiple)
    if longest <= pack_length:
        length = min(length, pack_length)
    rows = bucket_rows(len(bins), row_multiple)
    group_rows = rows // row_multiple
    width = 0
    if targets:  # a row group's targets lie end to end
        row_targets = [sum(_target_count(examples[i]) for i in members) for members in bins]
        group_targets = [sum(row_targets[g * group_rows:(g + 1) * group_rows]) for g in range(row_multiple)]
        width = round_up(max(max(group_targets), 1), pad_to_multiple)
    tile_pairs = None
    if attention_tile and length % attention_tile == 0:
        row_spans = []
        for members in bins:
            start, spans = 0, []
            for index in members:
                example = examples[index]
                spans += example_spans(start, len(example.prompt), (len(ids) for ids in example.completions))
                start += example.length
            row_spans.append(spans)
        tile_pairs = tile_pairs_of_rows(row_spans, rows, length, attention_tile)
    pairs = 0 if tile_pairs is None else tile_pairs.shape[1]
    return Layout(bins, (rows, length, width, pairs), tile_pairs)


def candidate_layouts(
    examples: Sequence[TokenizedExample], *, pack_length: int, pad_to_multiple: int = 64, row_multiple: int = 1,
    attention_tile: int | None = None, targets: bool = True,
) -> list[Layout]:
    """The packings ``pack_examples`` chooses among with a ``cost``: first-fit-decreasing into
    rows of ``pack_length`` tokens, then of every shorter multiple of ``pad_to_multiple`` that
    still holds the longest example (at most ``MAX_ROW_LENGTHS`` lengths in all, evenly spaced);
    distinct ones only, ``pack_length``'s first.

    Fewer, fuller rows are not always cheaper than more, shorter ones: eight HH-RLHF pairs
    (about 2,000 tokens) fill two rows of 1,024 to 78% on average, and three of 704 or four of
    576 often hold them with less padding."""
    lengths = [example.length for example in examples]
    capacities = [pack_length]
    if lengths and max(lengths) <= pack_length:
        shortest = round_up(max(lengths), pad_to_multiple)
        longest = round_up(pack_length, pad_to_multiple) - pad_to_multiple
        shorter = max(0, (longest - shortest) // pad_to_multiple + 1)
        step = pad_to_multiple * -(-shorter // (MAX_ROW_LENGTHS - 1))
        capacities += list(range(longest, shortest - 1, -step)) if shorter else []
    layouts, seen = [], set()
    for capacity in capacities:
        bins = first_fit_decreasing(lengths, capacity)
        key = tuple(map(tuple, bins))
        if key not in seen:
            seen.add(key)
            layouts.append(layout_rows(examples, bins, pack_length=pack_length, pad_to_multiple=pad_to_multiple,
                                       row_multiple=row_multiple, attention_tile=attention_tile, targets=targets))
    return layouts


def pack_examples(
    examples: Sequence[TokenizedExample],
    *,
    slots: int,
    pack_length: int,
    pad_to_multiple: int = 64,
    row_multiple: int = 1,
    attention_tile: int | None = None,
    targets: bool = True,
    replies: int | None = None,
    cost: Callable[[tuple[int, int, int, int]], float] | None = None,
) -> dict[str, np.ndarray]:
    """Packs up to ``slots`` examples into the batch layout of ``jaxalign/batch.py``.

    Returns int32 ``input_ids/positions/segment_ids/branch_ids`` ``[R, L]``,
    ``target_index/target_ids/target_segment/target_branch/target_row`` ``[G, C]``
    (G = ``row_multiple`` row groups of R / G consecutive rows; ``target_row`` is
    the row within the group),
    ``end_index`` ``[R, K, 2]``, float32 ``example_mask`` ``[R, K]``, int32
    ``example_id`` ``[R, K]`` (the example's index in its split; 0 in empty slots), and
    float32 ``margin``/``label`` and every per-example column of
    ``TokenizedExample.columns`` (``weight``, ...) ``[R, K]`` when any example
    has one, and int32 ``tile_pairs`` ``[R, P, 2]`` (see ``tile_pairs.attention_tile_pairs``) when
    ``attention_tile`` is given and divides L. Padding is zeros everywhere
    except in ``tile_pairs`` (-1). ``targets=False`` leaves out the ``target_*``
    arrays (reward models read only ``end_index``), so batches that differ
    only in C share one shape. ``replies=M`` packs rankings: up to M replies an
    example (branches 1..M), ``end_index`` ``[R, K, M]`` and float32
    ``reply_mask`` ``[R, K, M]`` (1 where the reply exists).

    ``cost``: a price of a packed shape ``(R, L, C, P)`` (the data pipeline's: what the shape
    ladder level holding it costs). With it, every layout of ``candidate_layouts`` is priced
    and the cheapest kept (the longest rows on ties); without it, rows of ``pack_length``.
    """
    if len(examples) > slots:
        raise ValueError(f"{len(examples)} examples do not fit {slots} example slots")
    shape_args = dict(pack_length=pack_length, pad_to_multiple=pad_to_multiple, row_multiple=row_multiple,
                      attention_tile=attention_tile, targets=targets)
    if cost is None:
        layout = layout_rows(examples, first_fit_decreasing([ex.length for ex in examples], pack_length), **shape_args)
    else:
        layout = min(candidate_layouts(examples, **shape_args), key=lambda candidate: cost(candidate.shape))
    rows, length, width, _ = layout.shape
    group_rows = rows // row_multiple

    batch = {key: np.zeros((rows, length), np.int32) for key in LENGTH_KEYS}
    if targets:
        batch.update({key: np.zeros((row_multiple, width), np.int32) for key in TARGET_KEYS})
    if replies is not None:
        most = max((len(ex.completions) for ex in examples), default=0)
        if most > replies:
            raise ValueError(f"an example has {most} replies; the batch was sized for {replies}")
        batch["reply_mask"] = np.zeros((rows, slots, replies), np.float32)
    batch["end_index"] = np.zeros((rows, slots, replies or 2), np.int32)
    batch["example_mask"] = np.zeros((rows, slots), np.float32)
    batch["example_id"] = np.zeros((rows, slots), np.int32)
    for column in ("margin", "label"):
        if any(getattr(ex, column) is not None for ex in examples):
            batch[column] = np.zeros((rows, slots), np.float32)
    for column in sorted({name for ex in examples for name in ex.columns}):
        batch[column] = np.zeros((rows, slots), np.float32)

    filled = [0] * row_multiple
    for r, members in enumerate(layout.bins):
        start = 0
        group, row_in_group = divmod(r, group_rows)
        for slot, index in enumerate(members, start=1):
            example = examples[index]
            _place(batch, r, slot, start, example)
            if targets:
                index, ids, branch = _targets(example, start)
                span = slice(filled[group], filled[group] + len(ids))
                batch["target_index"][group, span] = index
                batch["target_ids"][group, span] = ids
                batch["target_segment"][group, span] = slot
                batch["target_branch"][group, span] = branch
                batch["target_row"][group, span] = row_in_group
                filled[group] += len(ids)
            start += example.length
    if layout.tile_pairs is not None:
        batch["tile_pairs"] = layout.tile_pairs
    return batch


def _place(batch: dict[str, np.ndarray], r: int, slot: int, start: int, example: TokenizedExample) -> None:
    prompt_length = len(example.prompt)
    stop = start + prompt_length
    batch["input_ids"][r, start:stop] = example.prompt
    batch["positions"][r, start:stop] = np.arange(prompt_length)
    batch["segment_ids"][r, start:stop] = slot
    ends = []
    for branch, ids in enumerate(example.completions, start=1):
        begin, stop = stop, stop + len(ids)
        batch["input_ids"][r, begin:stop] = ids
        batch["positions"][r, begin:stop] = np.arange(prompt_length, prompt_length + len(ids))  # continue the prompt
        batch["segment_ids"][r, begin:stop] = slot
        batch["branch_ids"][r, begin:stop] = branch
        ends.append(stop - 1)
    if "reply_mask" in batch:
        batch["end_index"][r, slot - 1, : len(ends)] = ends
        batch["reply_mask"][r, slot - 1, : len(ends)] = 1.0
    else:
        batch["end_index"][r, slot - 1] = (ends + ends)[:2] if len(ends) == 1 else ends
    batch["example_mask"][r, slot - 1] = 1.0
    batch["example_id"][r, slot - 1] = example.example_id
    if "margin" in batch and example.margin is not None:
        batch["margin"][r, slot - 1] = example.margin
    if "label" in batch and example.label is not None:
        batch["label"][r, slot - 1] = example.label
    for column, value in example.columns.items():
        batch[column][r, slot - 1] = value


def unpack(batch: dict[str, np.ndarray]) -> list[TokenizedExample]:
    """Inverse of ``pack_examples``: the examples in (row, slot) order.

    Raises ``ValueError`` if positions, branch order, end indices or targets
    disagree with the layout.
    """
    examples = []
    rows, slots = batch["example_mask"].shape
    for r in range(rows):
        for slot in range(1, slots + 1):
            where = np.flatnonzero(batch["segment_ids"][r] == slot)
            if where.size == 0:
                if batch["example_mask"][r, slot - 1]:
                    raise ValueError(f"row {r} slot {slot}: marked as an example but has no tokens")
                continue
            examples.append(_unpack_one(batch, r, slot, where))
    return examples


def _unpack_one(batch: dict[str, np.ndarray], r: int, slot: int, where: np.ndarray) -> TokenizedExample:
    def fail(message: str) -> ValueError:
        return ValueError(f"row {r} slot {slot}: {message}")

    branches = batch["branch_ids"][r, where]
    if np.any(np.diff(where) != 1) or np.any(np.diff(branches) < 0):
        raise fail("tokens are not contiguous in prompt, chosen, rejected order")
    ids = batch["input_ids"][r, where]
    positions = batch["positions"][r, where]
    prompt = ids[branches == 0]
    prompt_length = len(prompt)
    if prompt_length == 0:
        raise fail("no prompt tokens")
    completion_branches = sorted(set(branches[branches > 0].tolist()))
    if completion_branches != list(range(1, len(completion_branches) + 1)) or not completion_branches:
        raise fail(f"unexpected branches {completion_branches}")
    start, prompt_end = where[0], where[0] + prompt_length
    expected_positions = np.concatenate(
        [np.arange(prompt_length)] + [np.arange(prompt_length, prompt_length + np.sum(branches == b)) for b in completion_branches]
    )
    if not np.array_equal(positions, expected_positions):
        raise fail("positions do not restart per example / continue from the prompt end per branch")

    group, row_in_group = divmod(r, len(batch["input_ids"]) // len(batch["target_index"]))
    in_slot = (batch["target_segment"][group] == slot) & (batch["target_row"][group] == row_in_group)
    target_index = batch["target_index"][group, in_slot]
    target_ids = batch["target_ids"][group, in_slot]
    target_branch = batch["target_branch"][group, in_slot]
    completions, masks, ends = [], [], []
    prompt_loss = False
    for branch in completion_branches:
        row_positions = where[branches == branch]
        completions.append(ids[branches == branch])
        ends.append(row_positions[-1])
        # Position whose output predicts each completion token.
        predictor = np.concatenate([[prompt_end - 1], row_positions[:-1]])
        mask = np.zeros(len(row_positions), bool)
        for index, token in zip(target_index[target_branch == branch], target_ids[target_branch == branch]):
            hit = np.flatnonzero(predictor == index)
            if hit.size:
                if token != completions[-1][hit[0]]:
                    raise fail(f"target at {index} is {token}, the token it predicts is {completions[-1][hit[0]]}")
                mask[hit[0]] = True
            elif branch == 1 and start <= index < prompt_end - 1 and token == batch["input_ids"][r, index + 1]:
                prompt_loss = True
            else:
                raise fail(f"target at index {index} (branch {branch}) predicts no token of this example")
        masks.append(mask)
    end_index = batch["end_index"][r, slot - 1]
    if "reply_mask" in batch:
        expected = ends + [0] * (len(end_index) - len(ends))
        if list(batch["reply_mask"][r, slot - 1]) != [1.0] * len(ends) + [0.0] * (len(end_index) - len(ends)):
            raise fail(f"reply_mask {list(batch['reply_mask'][r, slot - 1])} does not mark {len(ends)} replies")
    else:
        expected = ends * 2 if len(ends) == 1 else ends
    if list(end_index) != expected:
        raise fail(f"end_index {list(end_index)} != last completion positions {ends}")
    margin = float(batch["margin"][r, slot - 1]) if "margin" in batch else None
    label = float(batch["label"][r, slot - 1]) if "label" in batch else None
    columns = {name: float(batch[name][r, slot - 1]) for name in EXAMPLE_COLUMNS if name in batch}
    return TokenizedExample(prompt, tuple(completions), tuple(masks), prompt_loss, margin, label, columns=columns)


def pack_prompts(
    examples: Sequence[TokenizedExample], *, slots: int, pad_to_multiple: int = 64, row_multiple: int = 1
) -> dict[str, np.ndarray]:
    """Prompt-only examples -> left-padded rows for generation.

    Returns int32 ``prompt_ids`` and ``prompt_mask`` ``[B, Lp]`` (prompts end at
    the right edge) and float32 ``example_mask`` ``[B]``, with B = ``slots``
    rounded up to a multiple of ``row_multiple`` and Lp the longest prompt
    rounded up to ``pad_to_multiple``.
    """
    if len(examples) > slots:
        raise ValueError(f"{len(examples)} prompts do not fit {slots} slots")
    rows = round_up(slots, row_multiple)
    length = round_up(max((len(ex.prompt) for ex in examples), default=1), pad_to_multiple)
    batch = {
        "prompt_ids": np.zeros((rows, length), np.int32),
        "prompt_mask": np.zeros((rows, length), np.int32),
        "example_mask": np.zeros((rows,), np.float32),
    }
    for row, example in enumerate(examples):
        size = len(example.prompt)
        batch["prompt_ids"][row, length - size:] = example.prompt
        batch["prompt_mask"][row, length - size:] = 1
        batch["example_mask"][row] = 1.0
    return batch


def batch_shape(batch: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
    """``(R, L, C, P)`` of a packed batch (C = 0 without targets, P = 0 without
    ``tile_pairs``); ``(B, Lp, 0, 0)`` of a prompt batch."""
    if "prompt_ids" in batch:
        return (*batch["prompt_ids"].shape, 0, 0)  # type: ignore[return-value]
    rows, length = batch["input_ids"].shape
    pairs = batch["tile_pairs"].shape[1] if "tile_pairs" in batch else 0
    width = batch["target_index"].shape[1] if "target_index" in batch else 0
    return rows, length, width, pairs


def pad_batch(batch: dict[str, np.ndarray], shape: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Pads a batch to ``shape`` = (rows, length, target slots, tile pairs), e.g. to
    its level of the shape ladder or the largest shape over processes
    (``jax.make_array_from_process_local_data`` needs every process to pass the
    same shape). Zeros, and -1 in ``tile_pairs``. New rows go at the end of each
    row group, so every row keeps its group and ``target_row``; the target arrays
    (one row per group) grow in C only. Prompts pad on the left."""
    rows, length, width, pairs = shape
    have = batch_shape(batch)
    if any(want < got for want, got in zip(shape, have)):
        raise ValueError(f"cannot pad a batch of shape {have} down to {shape}")
    groups = len(batch["target_index"]) if "target_index" in batch else 1
    if rows % groups:
        raise ValueError(f"cannot pad a batch of {groups} row groups to {rows} rows")
    padded = {}
    for key, value in batch.items():
        if key in TARGET_KEYS:
            padded[key] = np.pad(value, [(0, 0), (0, width - value.shape[1])])
            continue
        if groups > 1:  # pad each group's rows: [G, R/G, ...] -> [G, rows/G, ...]
            value = value.reshape(groups, -1, *value.shape[1:])
            grown = np.pad(value, [(0, 0), (0, rows // groups - value.shape[1])] + [(0, 0)] * (value.ndim - 2),
                           constant_values=-1 if key == "tile_pairs" else 0)
            value = grown.reshape(rows, *value.shape[2:])
        pad = [(0, rows - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
        if key in LENGTH_KEYS:
            pad[1] = (0, length - value.shape[1])
        elif key in ("prompt_ids", "prompt_mask"):
            pad[1] = (length - value.shape[1], 0)
        elif key == "tile_pairs":
            pad[1] = (0, pairs - value.shape[1])
            padded[key] = np.pad(value, pad, constant_values=-1)
            continue
        padded[key] = np.pad(value, pad)
    return padded
