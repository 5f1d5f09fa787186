"""Texts in, replies out: the jitted sampler behind the constitutional loop.

Rows are tokenized without special tokens (the few-shot prefix, or the text itself when
there is none, gets the tokenizer's BOS), left-padded to a width rounded up to
``WIDTH_MULTIPLE`` and to a fixed number of rows, so a run compiles a handful of programs.
A shared prefix goes to ``generate(prefix_ids=...)``: prefilled once per call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxalign.constitutional.transcript import cut_at_stop_strings
from jaxalign.data.tokenize import _bos_added_by
from jaxalign.generation import SamplingConfig, generate, stop_token_ids

WIDTH_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (a stop token or stop string) or "length"


class TextSampler:
    """``sample(token_rows, max_new_tokens, rng, prefix_ids)`` over one loaded policy."""

    def __init__(self, model: Any, tokenizer: Any, *, rows: int, mesh: Any, temperature: float, top_k: int,
                 top_p: float, stop_tokens: Sequence[str], stop_strings: Sequence[str]):
        self.graphdef, self.state = nnx.split(model)
        self.model_config = model.config
        self.tokenizer, self.rows, self.mesh = tokenizer, rows, mesh
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.stop_strings = tuple(stop_strings)
        self.extra_stops = tuple(single_token_ids(tokenizer, stop_tokens, "stop_tokens"))
        if tokenizer.eos_token_id is not None:
            self.extra_stops += (int(tokenizer.eos_token_id),)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
        self.bos = _bos_added_by(tokenizer)

    def encode(self, text: str, first: bool) -> list[int]:
        """Token ids of ``text``; ``first`` = it starts the model's input (BOS when the tokenizer adds one)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        return ([self.bos] if first and self.bos is not None else []) + list(ids)

    def sample(self, token_rows: Sequence[Sequence[int]], max_new_tokens: int, rng: jax.Array,
               prefix_ids: Sequence[int] | None = None) -> list[Sample]:
        cfg = SamplingConfig(max_new_tokens, self.temperature, self.top_k, self.top_p,
                             stop_token_ids=self.extra_stops, pad_token_id=self.pad_id)
        stops = set(stop_token_ids(cfg, self.model_config.eos_token_id))
        samples: list[Sample] = []
        for start in range(0, len(token_rows), self.rows):
            chunk = token_rows[start:start + self.rows]
            width = -(-max(len(row) for row in chunk) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
            ids = np.full((self.rows, width), self.pad_id, np.int32)
            mask = np.zeros((self.rows, width), np.int32)
            for r, row in enumerate(chunk):
                ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
            prefix = None if not prefix_ids else np.asarray(prefix_ids, np.int32)
            out = generate((self.graphdef, self.state), ids, mask, jax.random.fold_in(rng, start), cfg, mesh=self.mesh,
                           prefix_ids=prefix)
            tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            samples.extend(self._decode(tokens[r, :lengths[r]], stops) for r in range(len(chunk)))
        return samples

    def _decode(self, tokens: np.ndarray, stops: set[int]) -> Sample:
        stopped = len(tokens) > 0 and int(tokens[-1]) in stops
        text = self.tokenizer.decode((tokens[:-1] if stopped else tokens).tolist(), skip_special_tokens=True)
        text, cut = cut_at_stop_strings(text, self.stop_strings)
        return Sample(text, int(len(tokens)), "stop" if stopped or cut else "length")


def single_token_ids(tokenizer: Any, texts: Sequence[str], what: str) -> list[int]:
    """The one token id of each text; an error names any text the tokenizer splits."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{what}: {text!r} is {len(encoded)} tokens for this tokenizer ({encoded}); "
                             "use strings that are one token each")
        ids.append(int(encoded[0]))
    return ids
