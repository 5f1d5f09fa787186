"""The Grain pipeline: dataset spec -> resumable iterator of packed batches.

Rows are read and formatted eagerly (cheap, and it makes bad-row errors
immediate and ``num_examples`` exact on every process); tokenizing and packing
run lazily inside Grain, once per example per pass, in reader threads ahead
of the step. For training::

    MapDataset.source(examples)
      .shuffle(seed)                 # a new permutation each epoch
      [: steps_per_epoch * B]        # B = global batch; the epoch remainder is dropped
      -> ProcessShare                # positions [p*P, (p+1)*P) of every global batch
      .map(tokenize)                 # overlong examples dropped -> empty slots
      .batch(P, batch_fn=pack)       # P = B // process_count examples -> one batch
      .repeat(num_epochs)

so global step s of every epoch holds exactly permuted examples [s*B, (s+1)*B),
in that order once the processes' rows are laid end to end (as ``shard_batch``
does), every process runs the same number of steps, and the Grain iterator
state (a single index) restores the stream exactly. Eval is the same without shuffle or
remainder: the last global batch is padded with empty slots.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import grain
import numpy as np

from jaxalign.data.config import DataConfig
from jaxalign.data.errors import Counter
from jaxalign.data.formats import TextExample
from jaxalign.data.packing import batch_shape, candidate_layouts, pack_examples, pack_prompts, pad_batch, round_up
from jaxalign.data.rows import split_examples
from jaxalign.data.shapes import Shape, fit_ladder, fit_shape, largest_shape, sample_needs, shape_cost
from jaxalign.data.tokenize import Dropped, ExampleTokenizer, TokenizedExample

PAIRED_KINDS = ("preference", "reward", "listwise")  # examples with several replies sharing a prompt
SCORE_ONLY_KINDS = ("reward", "pointwise", "listwise")  # reward models: no target arrays, scores at end_index
ShapeAgreement = Callable[[tuple[int, int, int, int]], tuple[int, int, int, int]]


@dataclasses.dataclass
class DataPipeline:
    """One split's examples and how to batch them; ``iterator()`` starts a pass.

    ``num_examples`` counts examples over all processes (pairs for preference
    data); ``steps_per_epoch`` is the number of batches per epoch (per pass for
    eval), the same on every process.
    """

    split: str
    kind: str
    format: str
    examples: list[TextExample]
    batch_size: int  # global
    local_batch_size: int  # P, examples per process per step
    steps_per_epoch: int
    num_epochs: int
    pack_length: int
    shapes: tuple[Shape, ...] | None  # the ladder of batch shapes (None: data.max_shapes = 0, unbounded)
    _dataset: Any = dataclasses.field(repr=False)
    _load_stats: Counter = dataclasses.field(repr=False)
    _run_stats: Counter = dataclasses.field(repr=False)

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    @property
    def num_batches(self) -> int:
        return self.steps_per_epoch * self.num_epochs

    @property
    def stats(self) -> dict[str, int]:
        """Rows read/kept/skipped (by reason) for the whole split, plus counts
        over the batches this process has consumed so far (truncated, dropped,
        tokens and token slots)."""
        return {**self._load_stats.snapshot(), **self._run_stats.snapshot()}

    def iterator(self) -> grain.DatasetIterator:
        """A fresh pass (``num_epochs`` epochs for train, one for eval).

        The iterator's ``get_state()``/``set_state()`` save and restore its
        position; Grain's Orbax ``CheckpointHandler`` accepts it directly.
        """
        return iter(self._dataset)


def build_pipeline(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    split: str = "train",
    kind: str = "preference",
    process_index: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
    seed: int | None = None,
    shape_agreement: ShapeAgreement | None = None,
    ordered: bool = False,
    max_batches: int | None = None,
) -> DataPipeline | None:
    """Builds the ``split`` ("train" or "eval") pipeline for ``kind`` batches
    ("preference", "reward", "pointwise", "listwise", "unpaired", "sft",
    "prompt"; "reward" is "preference" without the target arrays, which a
    reward model never reads; "pointwise" one rated reply an example and
    "listwise" a ranking's replies, best first, both without targets).

    Returns None for "eval" when the config names no eval data. ``row_multiple``
    is the number of data-parallel shards this process feeds (rows of every
    batch are a multiple of it). ``shape_agreement``, called on every process in
    step with the batch's ``(R, L, C, P)``, returns the shape to pad to, e.g. the
    maximum over processes, which multi-process runs need. ``ordered`` reads
    the split once in order with every example kept (the last batch padded),
    as the eval split always is: for one pass over all training examples.
    ``max_batches``: the batches the run reads at most (``max_steps`` x
    gradient accumulation); with the epochs it gives the train split's run
    length, which the shape ladder weighs compiles against (a short run
    gets fewer shapes). The eval split, read again at every evaluation,
    keeps every level that cuts padding.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"data: split must be 'train' or 'eval', got '{split}'")
    if cfg.train is None:
        raise ValueError("data.train is required: a local file, builtin:NAME, or a hub dataset name")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    loaded = split_examples(cfg, split, tokenizer, kind)
    if loaded is None:
        return None
    fmt, examples, load_stats = loaded.format, loaded.examples, loaded.stats
    if not examples:
        raise ValueError(f"data: the {split} split has no usable examples ({load_stats.snapshot()})")

    batch_size = cfg.batch_size if split == "train" else (cfg.eval_batch_size or cfg.batch_size)
    if batch_size % process_count:
        raise ValueError(f"data: batch size {batch_size} is not divisible by {process_count} processes")
    local_batch = batch_size // process_count
    shuffled = split == "train" and not ordered
    if shuffled:
        steps = len(examples) // batch_size
        if steps == 0:
            raise ValueError(f"data: {len(examples)} training examples are fewer than batch_size {batch_size}")
    else:
        steps = math.ceil(len(examples) / batch_size)

    paired = kind in PAIRED_KINDS
    # A ranking batch holds up to `replies` replies an example: the most of the split, so every batch
    # (and every process, which formats the whole split) has one end_index width.
    replies = max(len(example.completions) for example in examples) if kind == "listwise" else None
    pack_length = cfg.resolved_pack_length(paired=paired, replies=replies or 2)
    to_tokens = ExampleTokenizer(
        tokenizer, cfg.max_length, cfg.resolved_max_prompt_length(), cfg.on_overlong,
        loss_on_prompt=kind == "sft" and not cfg.completion_only_loss,
    )
    run_stats = Counter()
    attention_tile = cfg.attention_tile(paired=paired, replies=replies or 2)
    layout = dict(kind=kind, slots=local_batch, pack_length=pack_length, pad_to_multiple=cfg.pad_to_multiple,
                  row_multiple=row_multiple, attention_tile=attention_tile, replies=replies)

    indexed = list(enumerate(examples))
    if shuffled:
        dataset = grain.MapDataset.source(indexed)
        if cfg.shuffle:
            dataset = dataset.shuffle(seed=(cfg.seed if seed is None else seed) % 2**32)  # Grain takes 32 bits
        dataset = dataset[: steps * batch_size]
        epochs = cfg.num_epochs
    else:  # pad the last global batch with empty slots so every process has `steps` batches
        dataset = grain.MapDataset.source(indexed + [None] * (steps * batch_size - len(examples)))
        epochs = 1

    def tokenized(process: int) -> grain.MapDataset:
        share = ProcessShare(dataset, process, process_count, local_batch)
        return share.map(lambda item: None if item is None else _tokenize_indexed(to_tokens, *item))

    shapes = None
    if cfg.max_shapes:
        largest = _largest_shape(cfg, kind, local_batch, pack_length, row_multiple, replies, attention_tile)
        streams = [tokenized(process) for process in range(process_count)]
        run_batches = None
        if split == "train":
            run_batches = steps * epochs if max_batches is None else min(steps * epochs, max_batches)
        needs = sample_needs(
            lambda step, process: _layout_shapes([streams[process][step * local_batch + j] for j in range(local_batch)],
                                                 **layout),
            steps=min(steps, run_batches or steps), process_count=process_count, examples_per_step=batch_size)
        run_scale = None if run_batches is None else run_batches / max(len(needs) // process_count, 1)
        shapes = fit_ladder(needs, largest, cfg.max_shapes, groups=row_multiple, run_scale=run_scale,
                            compile_cost=cfg.compile_cost_batches)
    consume = functools.partial(_consume, stats=run_stats, shapes=shapes, shape_agreement=shape_agreement)
    pack = functools.partial(_pack_batch, **layout, cost=functools.partial(_level_cost, shapes=shapes, groups=row_multiple))
    dataset = tokenized(process_index).batch(local_batch, drop_remainder=True, batch_fn=pack)
    if epochs > 1:
        dataset = dataset.repeat(epochs)
    read_options = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches)
    iterable = dataset.to_iter_dataset(read_options).map(consume)
    return DataPipeline(
        split=split, kind=kind, format=fmt, examples=examples, batch_size=batch_size,
        local_batch_size=local_batch, steps_per_epoch=steps, num_epochs=epochs, pack_length=pack_length,
        shapes=shapes, _dataset=iterable, _load_stats=load_stats, _run_stats=run_stats,
    )


class ProcessShare(grain.MapDataset):
    """Process ``process``'s examples: positions ``[process * P, (process + 1) * P)`` of every global
    batch of ``P * process_count`` (``P``: the local batch), epoch after epoch.

    Contiguous blocks rather than every ``process_count``-th example: ``shard_batch`` lays the
    processes' rows end to end, so a multi-process step then holds its examples in the order a
    single process would, row for row. RL samples a row's reply by its position, so the same
    prompt must sit at the same row for a 2-process run to equal a 1-process one."""

    def __init__(self, parent: grain.MapDataset, process: int, process_count: int, local_batch: int):
        super().__init__(parent)
        self._process, self._count, self._local = process, process_count, local_batch
        self._parent_length = len(parent)
        self._length = self._parent_length // process_count

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"ProcessShare(process={self._process}, process_count={self._count}, local_batch={self._local})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, self._length)  # later epochs: the parent's next permutation
        step, slot = divmod(position, self._local)
        return self._parent[epoch * self._parent_length + (step * self._count + self._process) * self._local + slot]


def _tokenize_indexed(to_tokens: ExampleTokenizer, index: int, example) -> TokenizedExample | Dropped:
    tokenized = to_tokens(example)
    return dataclasses.replace(tokenized, example_id=index) if isinstance(tokenized, TokenizedExample) else tokenized


def _with_mismatched_completions(examples: list[TokenizedExample]) -> list[TokenizedExample]:
    """KTO's KL baseline: each prompt also gets the next example's completion
    as a second branch, scored under both policy and reference."""
    count = len(examples)
    return [
        dataclasses.replace(
            example,
            completions=(example.completions[0], examples[(i + 1) % count].completions[0]),
            loss_masks=(example.loss_masks[0], np.ones(len(examples[(i + 1) % count].completions[0]), bool)),
        )
        for i, example in enumerate(examples)
    ]


def _examples_to_pack(items: Sequence[TokenizedExample | Dropped | None], kind: str) -> list[TokenizedExample]:
    examples = [item for item in items if isinstance(item, TokenizedExample)]
    if kind == "unpaired" and examples:
        examples = _with_mismatched_completions(examples)
    return examples


def _layout_shapes(
    items: Sequence[TokenizedExample | Dropped | None], *, kind: str, slots: int, pack_length: int,
    pad_to_multiple: int, row_multiple: int, attention_tile: int | None, replies: int | None = None,
) -> list[Shape]:
    """The shapes ``_pack_batch`` may pack these items to (what the shape ladder is fitted to)."""
    examples = _examples_to_pack(items, kind)
    if kind == "prompt":
        return [batch_shape(pack_prompts(examples, slots=slots, pad_to_multiple=pad_to_multiple,
                                         row_multiple=row_multiple))]
    return [layout.shape for layout in candidate_layouts(
        examples, pack_length=pack_length, pad_to_multiple=pad_to_multiple, row_multiple=row_multiple,
        attention_tile=attention_tile, targets=kind not in SCORE_ONLY_KINDS)]


def _level_cost(shape: Shape, *, shapes: Sequence[Shape] | None, groups: int) -> int:
    """What a batch of ``shape`` costs once padded to its level of the ladder (its own shape without one)."""
    return shape_cost(shape if shapes is None else fit_shape(shapes, shape), groups)


def _pack_batch(
    items: Sequence[TokenizedExample | Dropped | None], *, kind: str, slots: int, pack_length: int,
    pad_to_multiple: int, row_multiple: int, attention_tile: int | None, replies: int | None = None,
    cost: Callable[[Shape], float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Grain ``batch_fn``: P tokenized examples (None = eval padding) -> (arrays, counts), packed
    the way ``cost`` prices cheapest (``packing.pack_examples``)."""
    examples = _examples_to_pack(items, kind)
    counts = {"batches": 1, "examples_packed": len(examples)}
    for item in items:
        if isinstance(item, Dropped):
            counts[f"dropped/{item.reason}"] = counts.get(f"dropped/{item.reason}", 0) + 1
    counts["truncated"] = sum(example.truncated for example in examples)
    if kind == "prompt":
        batch = pack_prompts(examples, slots=slots, pad_to_multiple=pad_to_multiple, row_multiple=row_multiple)
        # Which example each row holds (0 in padding rows): RL reward sources look up the row (data.rows.ExampleRows).
        batch["example_id"] = np.zeros(batch["example_mask"].shape, np.int32)
        batch["example_id"][:len(examples)] = [example.example_id for example in examples]
        counts["tokens"], counts["token_slots"] = int(batch["prompt_mask"].sum()), batch["prompt_mask"].size
    else:
        batch = pack_examples(examples, slots=slots, pack_length=pack_length, pad_to_multiple=pad_to_multiple,
                              row_multiple=row_multiple, attention_tile=attention_tile,
                              targets=kind not in SCORE_ONLY_KINDS, replies=replies, cost=cost)
        counts["tokens"], counts["token_slots"] = int(np.count_nonzero(batch["segment_ids"])), batch["segment_ids"].size
    return batch, counts


def _largest_shape(cfg: DataConfig, kind: str, slots: int, pack_length: int, row_multiple: int,
                   replies: int | None, attention_tile: int | None) -> Shape:
    """The largest batch of ``kind`` the config allows (the top of the shape ladder)."""
    if kind == "prompt":
        return round_up(slots, row_multiple), round_up(cfg.max_length, cfg.pad_to_multiple), 0, 0
    # Unpaired (KTO) rows carry a mismatched second completion, so they are as long as a pair.
    branches = (replies or 2) if kind in PAIRED_KINDS or kind == "unpaired" else 1
    return largest_shape(slots=slots, pack_length=pack_length, longest_example=branches * cfg.max_length,
                         pad_to_multiple=cfg.pad_to_multiple, row_multiple=row_multiple,
                         attention_tile=attention_tile, targets=kind not in SCORE_ONLY_KINDS)


def _consume(
    packed: tuple[dict[str, np.ndarray], dict[str, int]], *, stats: Counter, shapes: Sequence[Shape] | None,
    shape_agreement: ShapeAgreement | None,
) -> dict[str, np.ndarray]:
    """Runs in the consumer's ``next()``: counts the batch, and pads it to its level of
    the shape ladder, agreed over processes."""
    batch, counts = packed
    shape = batch_shape(batch)
    if shapes is not None:
        shape = fit_shape(shapes, shape)
    if shape_agreement is not None:
        shape = tuple(shape_agreement(shape))
        if shapes is not None and all(a <= b for a, b in zip(shape, shapes[-1])):
            shape = fit_shape(shapes, shape)  # the maximum of two levels may fall between levels
    if shape != batch_shape(batch):
        batch = pad_batch(batch, shape)
    counts["token_slots"] = batch["prompt_mask" if "prompt_mask" in batch else "segment_ids"].size
    stats.update(counts)
    return batch
