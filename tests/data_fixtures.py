"""Shared helpers for the tests/test_data_*.py files (not a test module)."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = Path(__file__).resolve().parent / "data" / "real"  # HH-RLHF and GPT-2's tokenizer (README there)
HH_PATH = REAL_DATA / "hh-rlhf-helpful-base-test.jsonl.gz"
GPT2_PATH = REAL_DATA / "gpt2-tokenizer.json"

needs_shared_data = pytest.mark.skipif(
    not (HH_PATH.exists() and GPT2_PATH.exists()), reason="tests/data/real (HH-RLHF, GPT-2 tokenizer) not present"
)


@functools.cache
def builtin_tokenizer():
    from jaxalign.data import load_tokenizer

    return load_tokenizer("builtin")


@functools.cache
def gpt2_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(GPT2_PATH), eos_token="<|endoftext|>")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.cache
def hh_rows() -> tuple[dict, ...]:
    with gzip.open(HH_PATH, "rt") as handle:
        return tuple(json.loads(line) for line in handle)


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts or raw strings (written verbatim, e.g. a broken line)."""
    with open(path, "w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def same_example(a, b) -> bool:
    """TokenizedExample equality on content (ids, masks, prompt loss, margin, label)."""
    return (
        np.array_equal(a.prompt, b.prompt)
        and len(a.completions) == len(b.completions)
        and all(np.array_equal(x, y) for x, y in zip(a.completions, b.completions))
        and all(np.array_equal(x, y) for x, y in zip(a.loss_masks, b.loss_masks))
        and a.prompt_loss == b.prompt_loss
        and a.margin == b.margin
        and a.label == b.label
    )
