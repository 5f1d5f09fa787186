"""Evaluation data: prompt sets and held-out pairs read through the data layer (the same
formats, chat rendering and tokenization as training), and pairs as padded token arrays."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from jaxalign.data.config import DataConfig
from jaxalign.data.example import TextExample
from jaxalign.data.rows import ExampleRows, split_examples
from jaxalign.data.tokenize import ExampleTokenizer, TokenizedExample
from jaxalign.eval.spec import EvalError

PAD_MULTIPLE = 32  # token widths are rounded up to this


@dataclasses.dataclass
class EvalSet:
    """A split's examples, a per-example dict of the row's columns (with ``prompt``) and the
    ``ExampleRows`` lookup reward sources use."""

    examples: list[TextExample]
    rows: list[dict[str, Any]]
    lookup: ExampleRows
    source: str


def load_set(spec: str | None, run_config: Any | None, tokenizer: Any, kind: str, what: str,
             limit: int | None = None) -> EvalSet:
    """``spec`` (a data spec) or, without it, the run config's eval split, formatted for ``kind``
    (``prompt`` or ``preference``). ``what`` names the spec field in errors."""
    if spec is not None:
        data_cfg, split, source = DataConfig(train=spec, shuffle=False), "train", spec
    elif run_config is not None:
        data_cfg, split, source = run_config.data, "eval", f"{run_config.run_dir}'s data.eval split"
    else:
        raise EvalError(f"eval: no {what} given: set {what} (e.g. builtin:alignment_prompts#eval or a .jsonl file)")
    try:
        loaded = split_examples(data_cfg, split, tokenizer, kind)
    except FileNotFoundError as err:
        raise EvalError(f"eval: {what}: {err}") from None
    except ValueError as err:
        raise EvalError(f"eval: {what} {source}: {err}") from None
    if loaded is None:
        raise EvalError(f"eval: no {what} given and the run's config has no eval split (data.eval or "
                        f"data.eval_fraction); set {what}")
    examples = loaded.examples[:limit] if limit else loaded.examples
    if not examples:
        raise EvalError(f"eval: {what} {source} holds no examples")
    lookup = ExampleRows(loaded.examples, loaded.rows)
    ids = range(len(examples))
    columns = lookup.columns(ids)
    rows = [{"prompt": example.prompt, **{name: values[i] for name, values in columns.items()}}
            for i, example in enumerate(examples)]
    return EvalSet(list(examples), rows, lookup, source)


def tokenize_pairs(examples: Sequence[TextExample], tokenizer: Any, max_length: int) -> list[TokenizedExample]:
    """Each pair as training tokenizes it (EOS appended to plain-text replies; over-long pairs keep
    the prompt's end and cut the replies)."""
    to_tokens = ExampleTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_length // 2)
    return [to_tokens(example) for example in examples]


def pair_batches(pairs: Sequence[TokenizedExample], batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(real pairs, arrays) per batch of ``batch_size`` pairs: ``prompt_ids``/``prompt_mask``
    ``[2B, Lp]`` left-padded, ``completion_ids``/``completion_mask`` ``[2B, Lc]`` right-padded; rows
    0..B-1 are the chosen replies, B..2B-1 the rejected ones (padding pairs are empty). Every
    batch has the set's widths, so the scoring function compiles once."""
    prompt_width = _width(max((len(pair.prompt) for pair in pairs), default=1))
    reply_width = _width(max((len(reply) for pair in pairs for reply in pair.completions[:2]), default=1))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prompts = [pair.prompt for pair in chunk] * 2
        replies = [pair.completions[0] for pair in chunk] + [pair.completions[1] for pair in chunk]
        rows = 2 * batch_size
        arrays = {"prompt_ids": np.zeros((rows, prompt_width), np.int32),
                  "prompt_mask": np.zeros((rows, prompt_width), np.int32),
                  "completion_ids": np.zeros((rows, reply_width), np.int32),
                  "completion_mask": np.zeros((rows, reply_width), np.float32)}
        slots = list(range(len(chunk))) + list(range(batch_size, batch_size + len(chunk)))
        for slot, prompt, reply in zip(slots, prompts, replies):
            arrays["prompt_ids"][slot, prompt_width - len(prompt):] = prompt
            arrays["prompt_mask"][slot, prompt_width - len(prompt):] = 1
            arrays["completion_ids"][slot, :len(reply)] = reply
            arrays["completion_mask"][slot, :len(reply)] = 1
        yield len(chunk), arrays


def _width(length: int) -> int:
    return max(-(-length // PAD_MULTIPLE) * PAD_MULTIPLE, PAD_MULTIPLE)
