"""A split's rows and examples, read and formatted once, and the lookup from an
example id (the pipeline's numbering) back to its dataset row.

``build_pipeline`` numbers a split's examples by their index in
``split_examples(...).examples``; prompt batches carry those numbers as
``example_id``. RL reward sources need each prompt's row: its other columns
(a reference answer, a category), and where it came from for error messages.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from jaxalign.data import feedback
from jaxalign.data.chat import ChatRenderer
from jaxalign.data.config import DataConfig
from jaxalign.data.errors import Counter
from jaxalign.data.formats import TextExample, detect_format, format_rows
from jaxalign.data.sources import RawRow, carve_eval, read_rows

RESERVED_COLUMNS = ("prompt", "prompts", "completions", "completion_ids")  # the prompt and reward-function arguments


def split_rows(cfg: DataConfig, split: str) -> list[RawRow] | None:
    """The raw rows of ``split`` ("train" or "eval"); None when the config names no eval data."""
    if split == "train":
        rows = read_rows(cfg.train, "train")
        return carve_eval(rows, cfg.eval_fraction)[0]
    if cfg.eval is not None:
        return read_rows(cfg.eval, "eval")
    if cfg.eval_fraction > 0:
        return carve_eval(read_rows(cfg.train, "train"), cfg.eval_fraction)[1]
    return None


@dataclasses.dataclass
class SplitExamples:
    """A split's rows, its format, its examples for one data kind and the load counts."""

    rows: list[RawRow]
    format: str
    examples: list[TextExample]
    stats: Counter


def split_examples(cfg: DataConfig, split: str, tokenizer: Any, kind: str) -> SplitExamples | None:
    """Reads and formats ``split`` for ``kind`` (bad rows raise or are counted per ``cfg.on_bad_row``)."""
    rows = split_rows(cfg, split)
    if rows is None:
        return None
    fmt = detect_format(rows) if cfg.format == "auto" else cfg.format
    stats = Counter()
    renderer = functools.cache(lambda: ChatRenderer(tokenizer))
    examples = format_rows(rows, fmt, kind, renderer, cfg.on_bad_row, stats,
                           max_skipped_fraction=cfg.max_skipped_fraction, split=split, cfg=cfg)
    examples = feedback.prepare(examples, cfg, kind, split)
    return SplitExamples(rows, fmt, examples, stats)


class ExampleRows:
    """Example id -> the example's prompt text, where it came from and its row's other columns.

    Built from ``split_examples``; ids index its ``examples``. A row without a
    column gives None for it."""

    def __init__(self, examples: Sequence[TextExample], rows: Sequence[RawRow]):
        by_where = {row.where: row.value for row in rows if isinstance(row.value, dict)}
        self._examples = list(examples)
        self._rows = [by_where.get(example.where, {}) for example in self._examples]
        self.names = sorted({name for row in self._rows for name in row if name not in RESERVED_COLUMNS})

    @classmethod
    def of_split(cls, cfg: DataConfig, split: str, tokenizer: Any, kind: str = "prompt") -> "ExampleRows | None":
        """The lookup for ``split`` as ``build_pipeline`` numbers it (None without eval data)."""
        loaded = split_examples(cfg, split, tokenizer, kind)
        return None if loaded is None else cls(loaded.examples, loaded.rows)

    def __len__(self) -> int:
        return len(self._examples)

    def prompts(self, example_ids: Sequence[int]) -> list[str]:
        return [self._examples[i].prompt for i in example_ids]

    def where(self, example_ids: Sequence[int]) -> list[str]:
        """``file:line`` (or ``name#split:row i``) of each example's row."""
        return [self._examples[i].where for i in example_ids]

    def columns(self, example_ids: Sequence[int]) -> dict[str, list[Any]]:
        """{column: one value per id} for every column but the prompt."""
        return {name: [self._rows[i].get(name) for i in example_ids] for name in self.names}
