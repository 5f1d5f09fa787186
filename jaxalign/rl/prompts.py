"""Prompt batches from plain strings, for callers that have texts rather than a dataset
(Constitutional AI's transcripts, evaluation prompt lists): tokenized and packed as the
data pipeline packs ``kind: prompt`` batches (BOS when the tokenizer adds one, over-long
prompts keep their end, left padding)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp

from jaxalign.data.formats import TextExample
from jaxalign.data.packing import pack_prompts
from jaxalign.data.tokenize import ExampleTokenizer


def prompt_batch(tokenizer: Any, texts: Sequence[str], *, max_prompt_length: int = 1024, slots: int | None = None,
                 pad_to_multiple: int = 16, row_multiple: int = 1) -> dict[str, jnp.ndarray]:
    """``prompt_ids``, ``prompt_mask`` ``[B, Lp]``, ``example_mask`` and ``example_id`` ``[B]`` (ids
    0..len(texts)-1; B = ``slots`` (default: the texts) rounded up to ``row_multiple``)."""
    if not texts:
        raise ValueError("prompt_batch: no prompts")
    to_tokens = ExampleTokenizer(tokenizer, max_length=max_prompt_length + 1, max_prompt_length=max_prompt_length)
    examples = [dataclasses.replace(to_tokens(TextExample(text, (), f"prompt {i}")), example_id=i)
                for i, text in enumerate(texts)]
    batch = pack_prompts(examples, slots=slots or len(examples), pad_to_multiple=pad_to_multiple,
                         row_multiple=row_multiple)
    batch["example_id"] = jnp.zeros(batch["example_mask"].shape, jnp.int32).at[:len(examples)].set(
        jnp.arange(len(examples), dtype=jnp.int32))
    return {name: jnp.asarray(value) for name, value in batch.items()}
