"""Dataset specs -> raw rows, each tagged with where it came from.

Local JSON(L) is parsed here, line by line, so that a bad row is reported as
``file:line``; parquet and hub datasets report ``source:row N`` (0-based, as
``dataset[N]``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.data.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")  # not read directly: a clear error says how to convert
BUILTIN_PREFIX = "builtin:"
# Fixed, so the held-out rows of ``eval_fraction`` never depend on the run seed.
EVAL_SPLIT_SEED = 20240917


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One row as read. ``value`` is the parsed row, or None with ``error`` set
    when the row could not be decoded at all."""

    where: str
    value: Any
    error: str | None = None


def parse_spec(spec: str, split: str) -> tuple[str, str | None]:
    """``"name#split"`` -> ``("name", "split")``. Without ``#``, built-ins and hub
    datasets read ``split`` ("train"/"eval"; hub eval reads "test") and local
    files are read whole (split None)."""
    if Path(spec).is_file() or "#" not in spec:
        name, chosen_split = spec, None
    else:
        name, chosen_split = spec.rsplit("#", 1)
    if _is_local(name):
        if chosen_split is not None:
            raise ValueError(f"data: '{spec}': a local file has no splits; give the eval file as data.eval")
        return name, None
    if chosen_split is None:
        chosen_split = split if name.startswith(BUILTIN_PREFIX) or split == "train" else "test"
    return name, chosen_split


def _is_local(name: str) -> bool:
    """A single local file; folders go through ``datasets.load_dataset`` like hub names."""
    return name.endswith(LOCAL_SUFFIXES) or Path(name).is_file()


def read_rows(spec: str, split: str = "train") -> list[RawRow]:
    """Reads every row of ``spec`` (see ``DataConfig``) into memory."""
    name, chosen_split = parse_spec(spec, split)
    if name.startswith(BUILTIN_PREFIX):
        from jaxalign.data import builtin  # generated on demand; no files needed

        rows = builtin.rows(name[len(BUILTIN_PREFIX):], chosen_split or split)
        return [RawRow(f"{name}#{chosen_split}:row {i}", row) for i, row in enumerate(rows)]
    if _is_local(name):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"data: file not found: {path}")
        if name.lower().endswith(TABLE_SUFFIXES):
            raise ValueError(
                f"data: {path}: CSV/TSV files are not read directly (their cells cannot hold chat messages or "
                "lists); convert it to JSON lines, e.g. pandas.read_csv(path).to_json('data.jsonl', "
                "orient='records', lines=True), or to parquet")
        rows = _read_parquet(path) if name.endswith(".parquet") else _read_json(path)
        if not rows:
            raise ValueError(f"data: {path} is empty: it holds no rows")
        return rows
    return _read_hub(name, chosen_split or split)


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_json(path: Path) -> list[RawRow]:
    with _open_bytes(path) as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        return _read_json_array(path)
    return _read_json_lines(path)


def _read_json_lines(path: Path) -> list[RawRow]:
    rows = []
    with _open_bytes(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rows.append(RawRow(where, None, f"line is not valid UTF-8 ({err.reason} at byte {err.start})"))
                continue
            text = text.rstrip("\r\n")  # else an error at the line's end reads as "line 2, column 1"
            if not text.strip():
                continue
            try:
                rows.append(RawRow(where, json.loads(text)))
            except json.JSONDecodeError as err:
                at = "at the end of the line" if err.pos >= len(text) else f"column {err.colno}"
                rows.append(RawRow(where, None, f"undecodable JSON line: {err.msg} ({at})"))
    return rows


def _read_json_array(path: Path) -> list[RawRow]:
    """A top-level JSON array, decoded element by element to keep line numbers."""
    with _open_bytes(path) as handle:
        text = handle.read().decode("utf-8")
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    offset, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    counted_to = offset
    while True:
        offset = _skip_space(text, offset)
        if offset < len(text) and text[offset] == "]":
            return rows
        if rows:
            if offset >= len(text) or text[offset] != ",":
                raise _array_error(path, text, offset, "expected ',' or ']' between rows")
            offset = _skip_space(text, offset + 1)
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        try:
            value, end = decoder.raw_decode(text, offset)
        except json.JSONDecodeError as err:
            raise _array_error(path, text, err.pos, f"undecodable JSON: {err.msg}") from err
        rows.append(RawRow(f"{path}:{line}", value))
        offset = end


def _skip_space(text: str, offset: int) -> int:
    while offset < len(text) and text[offset] in " \t\r\n":
        offset += 1
    return offset


def _array_error(path: Path, text: str, offset: int, detail: str) -> DataError:
    # A broken array cannot be resynchronised, so this is never skippable.
    return DataError(f"{path}:{1 + text.count(chr(10), 0, offset)}", "bad_json", detail)


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [RawRow(f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_hub(name: str, split: str) -> list[RawRow]:
    """A hub dataset (online) or a local dataset folder, via ``datasets.load_dataset``."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, missing split, unknown name: say which spec
        raise ValueError(
            f"data: could not load '{name}' split '{split}' from the Hugging Face hub ({err}). "
            f"Local files must end in one of {', '.join(LOCAL_SUFFIXES)}."
        ) from err
    return [RawRow(f"{name}#{split}:row {i}", row) for i, row in enumerate(dataset)]


def carve_eval(rows: list[RawRow], fraction: float) -> tuple[list[RawRow], list[RawRow]]:
    """Splits rows into (train, eval) with ``round(len * fraction)`` (at least one)
    eval rows chosen by a fixed permutation; both keep file order. Rows are
    split before formatting, so the pairs of one ratings row stay together."""
    if fraction <= 0:
        return rows, []
    count = max(1, round(len(rows) * fraction))
    if count >= len(rows):
        raise ValueError(f"data: eval_fraction {fraction} leaves no training rows out of {len(rows)}")
    held_out = np.zeros(len(rows), dtype=bool)
    held_out[np.random.default_rng(EVAL_SPLIT_SEED).permutation(len(rows))[:count]] = True
    train = [row for row, out in zip(rows, held_out) if not out]
    held = [row for row, out in zip(rows, held_out) if out]
    return train, held
