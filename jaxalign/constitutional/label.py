"""AI preference labels (``jaxalign label``): a judge model's P(chosen is better) per pair.

For each pair the judge reads the conversation, a principle's question and the two replies
as options (A) and (B), and its next-token distribution after ``Answer: (`` gives
``P(A) = p(label_A) / (p(label_A) + p(label_B))``. Each pair is shown in both orders
(chosen as A, then chosen as B) and the two estimates of P(chosen better) are averaged,
which cancels a judge's preference for a position:

    strength = (P_A(chosen, rejected) + 1 - P_A(rejected, chosen)) / 2

The strength goes into a column (default ``preference_strength``, what
``data.strength_column`` reads for soft labels). Agreement with the file's own labels
(its chosen/rejected orientation, e.g. a human's choice) is the share of pairs with
strength > 0.5 (0.5 counts half).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.constitutional.constitution import load_constitution
from jaxalign.data.chat import ChatRenderer
from jaxalign.data.errors import Counter, DataError
from jaxalign.data.formats import detect_format, row_examples
from jaxalign.data.sources import read_rows
from jaxalign.data.tokenize import _bos_added_by, load_tokenizer

DEFAULT_QUESTION = "Which reply is better?"
LABEL_CANDIDATES = (("A", "B"), (" A", " B"), ("1", "2"), (" 1", " 2"), ("a", "b"), ("X", "Y"))
WIDTH_MULTIPLE = 64

# [rows, width] left-padded token ids and mask -> [rows, 2] log-probs of the two labels' tokens
LabelScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def judge_prompt(prompt: str, reply_a: str, reply_b: str, question: str) -> str:
    """What the judge reads; its next token names the better option."""
    return (f"Here is a conversation between a person and an AI assistant:{prompt.rstrip()}\n\n"
            f"{question}\n(A){reply_a if reply_a.startswith(' ') else ' ' + reply_a}\n"
            f"(B){reply_b if reply_b.startswith(' ') else ' ' + reply_b}\n\nAnswer: (")


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> tuple[int, int]:
    """The two labels' token ids; an error when either is not one token (naming labels that are)."""
    encoded = [tokenizer.encode(label, add_special_tokens=False) for label in labels]
    if all(len(ids) == 1 for ids in encoded) and encoded[0] != encoded[1]:
        return int(encoded[0][0]), int(encoded[1][0])
    usable = [pair for pair in LABEL_CANDIDATES
              if all(len(tokenizer.encode(x, add_special_tokens=False)) == 1 for x in pair)
              and tokenizer.encode(pair[0], add_special_tokens=False) != tokenizer.encode(pair[1], add_special_tokens=False)]
    found = ", ".join(f"{len(ids)} tokens for {label!r}" for label, ids in zip(labels, encoded))
    advice = (f"use labels that are, e.g. --labels {','.join(usable[0])!r}" if usable
              else "none of " + ", ".join(repr(','.join(p)) for p in LABEL_CANDIDATES) + " are; pick two that are")
    raise ValueError(f"the judge's tokenizer does not encode the option labels as two different single tokens "
                     f"({found}); {advice}")


def model_label_scorer(model: Any, label_ids: tuple[int, int]) -> LabelScorer:
    """Log-probs of the two label tokens after each left-padded prompt: one jitted forward, last column only."""
    graphdef, state = nnx.split(model)
    labels = jnp.asarray(label_ids, jnp.int32)

    @jax.jit
    def score(state, ids, mask):
        judge = nnx.merge(graphdef, state)
        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        hidden = judge.hidden_states(ids, positions, mask)
        logps = jax.nn.log_softmax(judge.logits_from_hidden(hidden[:, -1]), axis=-1)  # [rows, vocab]
        return logps[:, labels]

    return lambda ids, mask: np.asarray(score(state, jnp.asarray(ids), jnp.asarray(mask)))


def p_first(label_logps: np.ndarray) -> np.ndarray:
    """P(A) normalised over the two labels, from ``[rows, 2]`` log-probs."""
    return 1.0 / (1.0 + np.exp(label_logps[:, 1] - label_logps[:, 0]))


@dataclasses.dataclass
class LabelResult:
    strengths: np.ndarray  # [pairs] P(chosen better), order-averaged
    p_a_chosen_first: np.ndarray  # [pairs] P(A) with chosen as A
    p_a_rejected_first: np.ndarray  # [pairs] P(A) with rejected as A
    truncated: int  # judge prompts (two per pair) longer than max_length (their end kept)
    previous: np.ndarray | None = None  # the column's values before labelling, where every row had one

    def metrics(self) -> dict[str, float]:
        s = self.strengths
        out = {"pairs": float(len(s)), "mean_strength": float(s.mean()),
               "agreement": float(np.mean(np.where(s == 0.5, 0.5, s > 0.5))),
               # mean P(A) over both orders: 0.5 = no position bias; what the averaging cancelled
               "position_bias": float(np.mean((self.p_a_chosen_first + self.p_a_rejected_first) / 2) - 0.5),
               "order_consistency": float(np.mean((self.p_a_chosen_first > 0.5) != (self.p_a_rejected_first > 0.5)))}
        if self.previous is not None:
            out["agreement_with_previous_column"] = float(np.mean((s > 0.5) == (self.previous > 0.5)))
            out["mean_abs_difference_from_previous_column"] = float(np.mean(np.abs(s - self.previous)))
        return out


def score_pairs(scorer: LabelScorer, encode: Callable[[str], list[int]], pairs: Sequence[tuple[str, str, str]],
                question: str, *, batch_size: int = 16, max_length: int = 1024, row_multiple: int = 1) -> LabelResult:
    """Order-averaged P(chosen better) of each ``(prompt, chosen, rejected)``."""
    texts = [judge_prompt(p, c, r, question) for p, c, r in pairs] + [judge_prompt(p, r, c, question) for p, c, r in pairs]
    token_rows = [encode(text) for text in texts]
    truncated = sum(len(row) > max_length for row in token_rows)
    token_rows = [row[-max_length:] for row in token_rows]
    rows = -(-batch_size // row_multiple) * row_multiple
    p_a = []
    for start in range(0, len(token_rows), rows):
        chunk = token_rows[start:start + rows]
        width = -(-max(len(r) for r in chunk) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
        ids, mask = np.zeros((rows, width), np.int32), np.zeros((rows, width), np.int32)
        mask[len(chunk):, -1] = 1  # padding rows hold one token, so their (unused) softmax stays finite
        for r, row in enumerate(chunk):
            ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
        p_a.append(p_first(scorer(ids, mask))[:len(chunk)])
    p_a = np.concatenate(p_a)
    first, second = p_a[:len(pairs)], p_a[len(pairs):]
    return LabelResult((first + 1.0 - second) / 2.0, first, second, truncated)


def _pairs_of(spec: str, tokenizer: Any) -> tuple[list[Any], list[tuple[str, str, str]]]:
    rows = read_rows(spec)
    fmt = detect_format(rows)
    renderer = functools.cache(lambda: ChatRenderer(tokenizer))
    pairs = []
    for row in rows:
        made = row_examples(row, fmt, "preference", renderer, Counter())
        if len(made) != 1 or len(made[0].completions) != 2:
            raise DataError(row.where, "not_a_pair", f"jaxalign label scores one pair per row (prompt, chosen, "
                            f"rejected); this {fmt} row makes {len(made)} pairs")
        chosen, rejected = made[0].reply_texts()
        pairs.append((made[0].prompt, chosen, rejected))
    return rows, pairs


def _question(principle: str | None, constitution: str | None) -> str:
    if principle is None:
        return DEFAULT_QUESTION
    loaded = load_constitution(constitution)
    if principle in {p.name for p in loaded.principles}:
        found = loaded.principle(principle)
        return found.judge_question or f"Which reply better follows this: {found.revision_request}"
    if " " in principle:  # a question of the user's own
        return principle
    return loaded.principle(principle).judge_question  # raises, listing the names


def label_file(pairs_spec: str, judge: str, out: str, *, principle: str | None = None, constitution: str | None = None,
               labels: Sequence[str] = ("A", "B"), column: str = "preference_strength", batch_size: int = 16,
               max_length: int = 1024, dtype: str | None = None) -> LabelResult:
    """Scores every pair of ``pairs_spec`` with the ``judge`` folder; writes the rows plus ``column`` to ``out``."""
    from jaxalign.models import load_pretrained
    from jaxalign.sharding import MeshConfig, batch_divisor, make_mesh

    question = _question(principle, constitution)
    tokenizer = load_tokenizer(judge)
    label_ids = label_token_ids(tokenizer, labels)
    rows, pairs = _pairs_of(pairs_spec, tokenizer)
    mesh = make_mesh(MeshConfig(data=-1))
    model = load_pretrained(judge, dtype=dtype, head="causal_lm", mesh=mesh)
    bos = _bos_added_by(tokenizer)
    encode = lambda text: ([bos] if bos is not None else []) + tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    scorer = model_label_scorer(model, label_ids)
    result = score_pairs(scorer, encode, pairs, question, batch_size=batch_size, max_length=max_length,
                         row_multiple=batch_divisor(mesh))
    previous = [row.value.get(column) for row in rows]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in previous):
        result.previous = np.asarray(previous, np.float64)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(str(out) + ".tmp")
    with temporary.open("w") as handle:  # whole or not at all: a half-labelled file is never left behind
        for row, strength in zip(rows, result.strengths):
            handle.write(json.dumps({**row.value, column: round(float(strength), 6)}, ensure_ascii=False) + "\n")
    temporary.replace(out)
    return result


def format_label_summary(result: LabelResult, out: str) -> str:
    m = result.metrics()
    line = (f"jaxalign: labelled {int(m['pairs'])} pairs -> {out}: mean P(chosen better) {m['mean_strength']:.3f}, "
            f"agreement with the file's chosen/rejected {100 * m['agreement']:.1f}%, position bias "
            f"{m['position_bias']:+.3f} (cancelled by averaging both orders), order-consistent "
            f"{100 * m['order_consistency']:.1f}%")
    if "agreement_with_previous_column" in m:
        line += (f"; vs the column's previous values: agreement {100 * m['agreement_with_previous_column']:.1f}%, "
                 f"mean |difference| {m['mean_abs_difference_from_previous_column']:.3f}")
    if result.truncated:
        line += f"; {result.truncated} judge prompts over max_length kept their end"
    return line
