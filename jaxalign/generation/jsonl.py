"""Prompts file in, completions file out: what ``jaxalign generate`` runs.

Rows are read and rendered by the data layer (``prompt`` strings, or chat
messages through the tokenizer's chat template; errors name file and line),
tokenized like training prompts (BOS when the tokenizer adds one; overlong
prompts keep their end), packed left-padded into batches of ``batch_size`` prompts and
sampled with ``generate`` on a data-parallel mesh over all local devices, ``slots``
replies at a time (continuous batching: a finished reply's slot takes the next prompt). Output rows keep
the input order: ``{prompt, completion, num_tokens, finish_reason}``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import jax
import numpy as np

from jaxalign.data.chat import ChatRenderer
from jaxalign.data.errors import Counter
from jaxalign.data.formats import detect_format, format_rows
from jaxalign.data.packing import pack_prompts
from jaxalign.data.sources import RawRow, read_rows
from jaxalign.data.tokenize import ExampleTokenizer, TokenizedExample, load_tokenizer
from jaxalign.generation.config import SamplingConfig
from jaxalign.generation.sampler import generate, stop_token_ids
from jaxalign.metrics_log import ProgressBar
from jaxalign.models import load_pretrained
from jaxalign.sharding import MeshConfig, batch_divisor, make_mesh

PROMPT_LENGTH_MULTIPLE = 64  # prompt widths are rounded up to this, so few distinct shapes compile


def read_prompts(path: str | Path, tokenizer: Any, max_prompt_length: int) -> tuple[list[RawRow], list[TokenizedExample]]:
    """The rows of a prompts file and their tokenized prompts (same order, one each)."""
    rows = read_rows(str(path))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    renderer = functools.cache(lambda: ChatRenderer(tokenizer))
    examples = format_rows(rows, detect_format(rows), "prompt", renderer, "raise", Counter())
    to_tokens = ExampleTokenizer(tokenizer, max_length=max_prompt_length + 1, max_prompt_length=max_prompt_length)
    return rows, [to_tokens(example) for example in examples]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _output_row(row: RawRow, example: TokenizedExample, tokens: np.ndarray, length: int, stop_ids: Sequence[int],
                tokenizer: Any) -> dict[str, Any]:
    completion = tokens[:length]
    stopped = length > 0 and int(completion[-1]) in stop_ids
    prompt = row.value.get("prompt") if isinstance(row.value, dict) else None
    return {
        "prompt": prompt if prompt is not None else tokenizer.decode(example.prompt.tolist()),
        "completion": tokenizer.decode(completion.tolist(), skip_special_tokens=True),
        "num_tokens": int(length),
        "finish_reason": "stop" if stopped else "length",
    }


def check_counts(slots: int, batch_size: int) -> None:
    """Raises the one-line error for a slot or batch count below 1 (before any output file is opened)."""
    if slots < 1 or batch_size < 1:
        raise ValueError(f"--slots and --batch-size must be >= 1, got {slots} and {batch_size}")


def generate_jsonl(
    model_dir: str | Path,
    prompts_path: str | Path,
    out: TextIO,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 256,
    slots: int = 16,
    seed: int = 0,
    max_prompt_length: int | None = None,
    dtype: str | None = None,
    progress: TextIO | None = None,
) -> dict[str, int]:
    """Writes one JSON line per prompt to ``out``; returns counts (prompts, tokens, truncated prompts).

    The model and its tokenizer both come from ``model_dir`` (a Hugging Face
    folder). Sampling stops at the tokenizer's and the model's EOS ids.
    ``max_prompt_length`` defaults to the model's context minus ``max_new_tokens``.
    ``batch_size`` prompts go to the sampler at a time (their replies are written when the
    batch is done); ``slots`` replies are decoded at once (rounded up to the device count).
    """
    if jax.process_count() > 1:
        raise ValueError("jaxalign generate runs in one process; start it on a single host")
    check_counts(slots, batch_size)
    tokenizer = load_tokenizer(str(model_dir))
    mesh = make_mesh(MeshConfig(data=-1))
    model = load_pretrained(model_dir, dtype=dtype, head="causal_lm", mesh=mesh)
    context = model.config.max_position_embeddings
    if max_prompt_length is None:
        max_prompt_length = context - max_new_tokens
    if max_prompt_length < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's {context} positions")
    rows, examples = read_prompts(prompts_path, tokenizer, max_prompt_length)

    extra_stops = () if tokenizer.eos_token_id is None else (int(tokenizer.eos_token_id),)
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
    slots = -(-slots // batch_divisor(mesh)) * batch_divisor(mesh)  # every device decodes as many rows
    cfg = SamplingConfig(max_new_tokens, temperature, top_k, top_p, stop_token_ids=extra_stops, pad_token_id=pad_id,
                         slots=slots)
    stop_ids = stop_token_ids(cfg, model.config.eos_token_id)
    rng = jax.random.key(seed)
    num_batches = -(-len(examples) // batch_size)
    bar = ProgressBar(num_batches, stream=progress if progress is not None else sys.stderr)
    started, total_tokens = time.monotonic(), 0
    pairs = list(zip(rows, examples))
    for index, chunk in enumerate(_batches(pairs, batch_size)):
        batch = pack_prompts([ex for _, ex in chunk], slots=batch_size, pad_to_multiple=PROMPT_LENGTH_MULTIPLE,
                             row_multiple=batch_divisor(mesh))
        result = generate(model, batch["prompt_ids"], batch["prompt_mask"], jax.random.fold_in(rng, index), cfg, mesh=mesh)
        tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
        for r, (row, example) in enumerate(chunk):
            out.write(json.dumps(_output_row(row, example, tokens[r], int(lengths[r]), stop_ids, tokenizer)) + "\n")
        out.flush()
        total_tokens += int(lengths.sum())
        bar.update(index + 1, tokens_per_s=total_tokens / max(time.monotonic() - started, 1e-9))
    bar.close()
    return {"prompts": len(examples), "tokens": total_tokens, "truncated_prompts": sum(ex.truncated for ex in examples)}
