"""``jaxalign data stats DATASET``: what a preference or feedback set holds, and how
far to trust its labels (docs/feedback.md).

``dataset_stats`` reads any dataset spec the trainer reads, formats it as the
trainer would (bad rows counted, not fatal) and returns a JSON-able dict:
counts, lengths (characters), length and position bias, exact and near
duplicates, contradictory pairs, rating distributions, and with an annotator
column the annotator statistics of ``stats_annotators`` plus flags naming
annotators who look unreliable, biased or miscalibrated. ``stats_report``
writes it as JSON and markdown.
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Any, Sequence

import numpy as np

from jaxalign.data.annotators import collect_votes
from jaxalign.data.config import DataConfig
from jaxalign.data.errors import Counter
from jaxalign.data.example import TextExample
from jaxalign.data.formats import FORMATS_FOR_KIND, detect_format, format_rows
from jaxalign.data.sources import read_rows
from jaxalign.data.stats_annotators import annotator_section

# Flags (documented in docs/feedback.md).
LOW_KAPPA = 0.4  # below "moderate" agreement (Landis and Koch 1977)
BIAS_EXCESS = 0.15  # an annotator's chosen-longer share this far above the others'
POSITION_BAND = (0.35, 0.65)  # chosen shown first outside this band
MIN_FOR_BIAS = 30  # pairs an annotator needs before a bias flag
OFFSET_LIMIT, SPREAD_BAND = 0.5, (0.67, 1.5)
POSITION_COLUMN = "chosen_first"


def dataset_stats(spec: str, *, split: str = "train", fmt: str = "auto", annotator_column: str = "annotator",
                  rating_scale: Sequence[float] | None = None, position_column: str = POSITION_COLUMN,
                  tokenizer: Any = None) -> dict[str, Any]:
    """Statistics of the rows of ``spec`` (see the module docstring)."""
    rows = read_rows(spec, split)
    fmt = detect_format(rows) if fmt == "auto" else fmt
    cfg = DataConfig(train=spec, format=fmt, rating_scale=list(rating_scale) if rating_scale else None,
                     annotators={"column": annotator_column})
    renderer = functools.cache(lambda: _renderer(tokenizer))
    load = Counter()
    views: dict[str, list[TextExample]] = {}
    for kind in ("preference", "pointwise"):
        if fmt in FORMATS_FOR_KIND[kind]:
            counter = load if not views else Counter()
            views[kind] = format_rows(rows, fmt, kind, renderer, "skip", counter, cfg=cfg)
    if not views:
        raise ValueError(f"data stats: {spec}: format '{fmt}' holds no pairs and no rated replies; stats cover "
                         f"{', '.join(sorted(set(FORMATS_FOR_KIND['preference'] + FORMATS_FOR_KIND['pointwise'])))}")
    counts = load.snapshot()
    pairs = [ex for ex in views.get("preference", []) if len(ex.completions) == 2]
    rated = [ex for ex in views.get("pointwise", []) if ex.rating is not None or ex.label is not None]
    position = [bool(row.value.get(position_column)) for row in rows
                if isinstance(row.value, dict) and isinstance(row.value.get(position_column), bool)]
    examples = pairs or rated
    out: dict[str, Any] = {
        "dataset": spec, "split": split, "format": fmt,
        "counts": {"rows_read": counts.get("rows_read", 0), "rows_kept": counts.get("rows_kept", 0),
                   "rows_skipped": counts.get("rows_skipped", 0),
                   "skipped": {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("skipped/")},
                   "pairs": len(pairs), "rated_replies": len(rated),
                   "prompts": len({ex.prompt for ex in examples}),
                   "annotators": len({ex.annotator for ex in examples if ex.annotator is not None})},
        "lengths": _lengths(pairs, rated),
        "length_bias": _length_bias(pairs),
        "position_bias": _position_bias(pairs, position, fmt, rows, position_column),
        "duplicates": _duplicates(examples),
        "contradictions": _contradictions(pairs),
        "warnings": [],
    }
    if rated and any(ex.rating is not None for ex in rated):
        out["ratings"] = _rating_distributions(rated, cfg.rating_scale)
    annotated = [ex for ex in examples if ex.annotator is not None]
    names = sorted({ex.annotator for ex in annotated})
    if len(names) == 1:
        out["warnings"].append(f"column '{annotator_column}' names one annotator only ('{names[0]}'): agreement, "
                               "kappa and alpha need two or more annotators judging the same items")
    elif names:
        votes, numeric = collect_votes(annotated)
        out["annotators"] = {"column": annotator_column, **annotator_section(votes, numeric)}
        out["annotators"]["flagged"] = _flags(out)
    return out


def _renderer(tokenizer: Any):
    if tokenizer is None:
        raise ValueError("data stats: conversational rows are rendered with a chat template; pass --tokenizer")
    from jaxalign.data.chat import ChatRenderer

    return ChatRenderer(tokenizer)


def _summary(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    if array.size == 0:
        return {"count": 0}
    return {"count": int(array.size), "mean": float(array.mean()), "p50": float(np.percentile(array, 50)),
            "p90": float(np.percentile(array, 90)), "max": float(array.max())}


def _lengths(pairs: list[TextExample], rated: list[TextExample]) -> dict[str, Any]:
    """Characters of prompts and replies."""
    out = {"unit": "characters", "prompt": _summary([len(ex.prompt) for ex in pairs or rated])}
    if pairs:
        out["chosen"] = _summary([len(ex.reply_texts()[0]) for ex in pairs])
        out["rejected"] = _summary([len(ex.reply_texts()[1]) for ex in pairs])
    if rated:
        out["reply"] = _summary([len(ex.reply_texts()[0]) for ex in rated])
    return out


def _share(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def _length_bias(pairs: list[TextExample]) -> dict[str, Any]:
    """Share of pairs (replies of different length) whose chosen reply is the longer, overall and per annotator."""
    longer: dict[str | None, list[bool]] = collections.defaultdict(list)
    for example in pairs:
        chosen, rejected = (len(text) for text in example.reply_texts())
        if chosen != rejected:
            longer[example.annotator].append(chosen > rejected)
    every = [flag for flags in longer.values() for flag in flags]
    return {"chosen_longer": _share(every), "pairs": len(every),
            "by_annotator": {name: {"chosen_longer": _share(flags), "pairs": len(flags)}
                             for name, flags in sorted(longer.items(), key=lambda kv: str(kv[0])) if name is not None}}


def _position_bias(pairs: list[TextExample], position: list[bool], fmt: str, rows, column: str) -> dict[str, Any]:
    """Share of pairs whose chosen reply was shown first: from a boolean column (``chosen_first``)
    or, for ``ratings`` rows, the order of their ``responses`` (earlier listed = shown first)."""
    if fmt == "ratings":
        first = []
        for row in rows:
            value = row.value if isinstance(row.value, dict) else {}
            scores = value.get("scores") or []
            first += [scores[i] > scores[j] for i in range(len(scores)) for j in range(i + 1, len(scores))
                      if isinstance(scores[i], (int, float)) and isinstance(scores[j], (int, float))
                      and scores[i] != scores[j]]
        return {"chosen_first": _share(first), "pairs": len(first), "source": "order of responses"}
    if not position:
        return {"chosen_first": None, "pairs": 0,
                "source": f"not measurable: rows carry no presentation order (a boolean '{column}' column)"}
    by_annotator: dict[str, list[bool]] = collections.defaultdict(list)
    for example, row_first in zip(pairs, _position_per_example(pairs, rows, column)):
        if example.annotator is not None and row_first is not None:
            by_annotator[example.annotator].append(row_first)
    return {"chosen_first": _share(position), "pairs": len(position), "source": f"column '{column}'",
            "by_annotator": {name: {"chosen_first": _share(flags), "pairs": len(flags)}
                             for name, flags in sorted(by_annotator.items())}}


def _position_per_example(pairs: list[TextExample], rows, column: str) -> list[bool | None]:
    by_where = {row.where: row.value.get(column) for row in rows if isinstance(row.value, dict)}
    return [by_where.get(example.where) if isinstance(by_where.get(example.where), bool) else None
            for example in pairs]


def _normalised(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _duplicates(examples: list[TextExample]) -> dict[str, Any]:
    """Exact duplicates: examples identical in prompt, replies (in order) and annotator.
    Near duplicates: identical only after lowercasing and dropping punctuation and spacing."""
    exact = collections.Counter((ex.prompt, ex.reply_texts(), ex.annotator) for ex in examples)
    near: dict[tuple, set] = collections.defaultdict(set)
    for ex in examples:
        near[(_normalised(ex.prompt), tuple(map(_normalised, ex.reply_texts())), ex.annotator)].add(
            (ex.prompt, ex.reply_texts()))
    repeated = [ex.where for ex in examples if exact[(ex.prompt, ex.reply_texts(), ex.annotator)] > 1]
    return {"exact": sum(n - 1 for n in exact.values()), "near": sum(len(v) - 1 for v in near.values()),
            "exact_examples": repeated[:5],
            "definition": "exact: same prompt, replies and annotator; near: the same after lowercasing and "
                          "removing punctuation and spacing"}


def _contradictions(pairs: list[TextExample]) -> dict[str, Any]:
    """Items (a prompt and two replies) labelled both ways: same two replies, opposite labels."""
    seen: dict[tuple, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for ex in pairs:
        chosen, rejected = ex.reply_texts()
        seen[(ex.prompt, frozenset((chosen, rejected)))][chosen].append(ex.where)
    both = [winners for winners in seen.values() if len(winners) == 2]
    return {"items": len(both), "of_items": len(seen), "share": _share([len(w) == 2 for w in seen.values()]),
            "examples": [sorted(where[0] for where in winners.values()) for winners in both[:5]]}


def _rating_distributions(rated: list[TextExample], scale: list[float] | None) -> dict[str, Any]:
    by_annotator: dict[str, list[float]] = collections.defaultdict(list)
    for ex in rated:
        if ex.rating is not None:
            by_annotator[ex.annotator or "(none)"].append(ex.rating)
    every = [r for values in by_annotator.values() for r in values]

    def describe(values: list[float]) -> dict[str, Any]:
        histogram = collections.Counter(values)
        return {"count": len(values), "mean": float(np.mean(values)), "std": float(np.std(values)),
                "histogram": {f"{k:g}": histogram[k] for k in sorted(histogram)}}

    return {"scale": scale, "all": describe(every), "by_annotator": {k: describe(v) for k, v in sorted(by_annotator.items())}}


def _flags(stats: dict[str, Any]) -> list[dict[str, str]]:
    """Annotators worth a look, each with the reason in numbers."""
    flags = []
    annotators = stats["annotators"]
    for name, row in annotators["agreement"].items():
        if row["kappa"] is not None and row["kappa"] < LOW_KAPPA:
            flags.append({"annotator": name, "why": f"low agreement with the majority: {row['agreement']:.0%} of "
                          f"{row['compared']} judgements, kappa {row['kappa']:.2f} (< {LOW_KAPPA})"})
    bias = stats["length_bias"]["by_annotator"]
    for name, row in bias.items():
        others = [r["chosen_longer"] * r["pairs"] for other, r in bias.items() if other != name]
        others_pairs = sum(r["pairs"] for other, r in bias.items() if other != name)
        if row["pairs"] >= MIN_FOR_BIAS and others_pairs and row["chosen_longer"] - sum(others) / others_pairs > BIAS_EXCESS:
            flags.append({"annotator": name, "why": f"length bias: chose the longer reply in {row['chosen_longer']:.0%} "
                          f"of {row['pairs']} pairs, others {sum(others) / others_pairs:.0%}"})
    for name, row in stats["position_bias"].get("by_annotator", {}).items():
        if row["pairs"] >= MIN_FOR_BIAS and not POSITION_BAND[0] <= row["chosen_first"] <= POSITION_BAND[1]:
            flags.append({"annotator": name, "why": f"position bias: chose the reply shown first in "
                          f"{row['chosen_first']:.0%} of {row['pairs']} pairs"})
    for name, row in annotators.get("calibration", {}).items():
        spread = row["spread"]
        if abs(row["offset"]) >= OFFSET_LIMIT or (spread is not None and not SPREAD_BAND[0] <= spread <= SPREAD_BAND[1]):
            flags.append({"annotator": name, "why": f"miscalibrated: offset {row['offset']:+.2f}, spread "
                          f"{spread if spread is not None else float('nan'):.2f} against the others "
                          "(data.rating_normalization: per_annotator evens this out)"})
    return flags
