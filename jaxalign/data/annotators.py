"""Annotator agreement and reliability weights, from formatted examples.

An *item* is what several annotators can judge alike: a pair (the prompt and
its two replies, in a fixed order) or a rated reply (the prompt and the
reply). A *vote* is the annotator's judgement: for a pair, which reply won
(0 or 1, categorical); for a rated reply, the rating (numeric); for an
acceptable/unacceptable label, the label (categorical).

An annotator's vote on an item is compared with the majority of all the
item's annotators, each counted by their reliability (the weighted mode for
categorical votes, items whose mode is tied left out; the weighted mean for
ratings, agreeing within half a scale step); items one annotator judged
alone are left out. Reliabilities start equal and are re-estimated in
``ROUNDS`` rounds (``agreement_table``). ``kappa`` corrects it for chance
as Cohen's kappa does, ``(p_o - p_e) / (1 - p_e)``, where ``p_e`` is the
agreement an annotator voting at random with their own vote frequencies would
reach against the same majority votes. Reliability weights are
``max(0, kappa)^2``: 1 for an annotator who always agrees, 0 at chance or
below. For two-way choices kappa is close to the correlation of the
annotator's votes with the majority's, so the weight is about the share of
their votes' variance the majority explains; squaring (rather than kappa
itself) matters when an annotator is wrong on purpose on part of the items:
on the built-in adversary set kappa weights won back 49-70% of the lost
accuracy over three seeds, squared ones more (docs/feedback.md).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

from jaxalign.data.columns import WEIGHT
from jaxalign.data.example import TextExample
from jaxalign.data.report import source_of
from jaxalign.metrics_log import get_logger

log = get_logger("data")

Item = tuple
Votes = dict[Item, dict[str, float]]  # item -> annotator -> vote


@dataclasses.dataclass(frozen=True)
class AnnotatorAgreement:
    """One annotator's labels and how they agree with the others."""

    annotator: str
    labels: int  # votes cast
    compared: int  # votes on items with another annotator and an untied majority
    agreement: float  # share of compared votes matching the majority (nan when none)
    kappa: float  # chance-corrected agreement (nan when undefined)

    @property
    def reliability(self) -> float:
        """``max(0, kappa)^2``; 1.0 when there is nothing to judge the annotator by."""
        return 1.0 if math.isnan(self.kappa) else max(0.0, self.kappa) ** 2


def vote_of(example: TextExample) -> tuple[Item, float, bool] | None:
    """``(item, vote, numeric)`` of an annotated example, or None when it has no annotator
    or no single judgement (rankings, prompts, SFT rows)."""
    replies = example.reply_texts()
    if example.rating is not None and len(replies) == 1:
        return ("rated", example.prompt, replies[0]), float(example.rating), True
    if example.label is not None and len(replies) == 1:
        return ("labelled", example.prompt, replies[0]), float(example.label), False
    if len(replies) == 2:
        ordered = tuple(sorted(replies))
        return ("pair", example.prompt, ordered), float(ordered.index(replies[0])), False
    return None


def collect_votes(examples: Iterable[TextExample]) -> tuple[Votes, bool]:
    """Votes per item of the annotated examples, and whether they are numeric (ratings).
    An annotator's repeated vote on one item keeps the first."""
    votes: Votes = collections.defaultdict(dict)
    numeric = False
    for example in examples:
        if example.annotator is None:
            continue
        found = vote_of(example)
        if found is None:
            continue
        item, vote, numeric = found
        votes[item].setdefault(example.annotator, vote)
    return dict(votes), numeric


def majority(votes: Sequence[tuple[float, float]], numeric: bool) -> float | None:
    """The weighted majority of ``(vote, weight)``: the weighted mean of ratings, the
    weighted mode of categories (None if tied or all weights 0)."""
    if not sum(weight for _, weight in votes):
        return None
    if numeric:
        return sum(vote * weight for vote, weight in votes) / sum(weight for _, weight in votes)
    totals: dict[float, float] = collections.defaultdict(float)
    for vote, weight in votes:
        totals[vote] += weight
    ranked = sorted(totals.values(), reverse=True)
    if len(ranked) > 1 and math.isclose(ranked[0], ranked[1]):
        return None
    return max(totals, key=totals.get)


def agrees(vote: float, majority_vote: float, numeric: bool) -> bool:
    return abs(vote - majority_vote) <= 0.5 if numeric else vote == majority_vote


ROUNDS = 5  # re-weighting rounds: the majority each annotator is compared with counts the others by reliability


def agreement_table(votes: Votes, numeric: bool) -> dict[str, AnnotatorAgreement]:
    """Each annotator's agreement with the majority and its kappa.

    The majority counts every annotator of the item by their reliability, found
    in ``ROUNDS`` rounds starting from equal weights (a simplified one-coin
    Dawid-Skene estimate): an unreliable annotator who judged most items then
    no longer decides the majority the careful ones are measured against. With
    equal weights an item two annotators disagree on is a tie and left out; a
    plain leave-one-out majority could not tell which of two is wrong.
    """
    labels: collections.Counter = collections.Counter(a for by_annotator in votes.values() for a in by_annotator)
    reliability = {annotator: 1.0 for annotator in labels}
    table: dict[str, AnnotatorAgreement] = {}
    for _ in range(ROUNDS):
        table = _agreement_round(votes, numeric, labels, reliability)
        reliability = {name: max(row.reliability, 0.05) for name, row in table.items()}  # nobody drops out entirely
    return table


def _agreement_round(votes: Votes, numeric: bool, labels: collections.Counter,
                     reliability: dict[str, float]) -> dict[str, AnnotatorAgreement]:
    compared: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for by_annotator in votes.values():
        for annotator, vote in by_annotator.items():
            if len(by_annotator) < 2:
                continue
            everyone = [(v, reliability[who]) for who, v in by_annotator.items()]
            majority_vote = majority(everyone, numeric)
            if majority_vote is not None:
                compared[annotator].append((vote, majority_vote))
    table = {}
    for annotator in sorted(labels):
        pairs = compared.get(annotator, [])
        if not pairs:
            table[annotator] = AnnotatorAgreement(annotator, labels[annotator], 0, math.nan, math.nan)
            continue
        own, majorities = zip(*pairs)
        observed = float(np.mean([agrees(v, m, numeric) for v, m in pairs]))
        expected = _chance_agreement(own, majorities, numeric)
        kappa = math.nan if expected >= 1.0 else (observed - expected) / (1.0 - expected)
        table[annotator] = AnnotatorAgreement(annotator, labels[annotator], len(pairs), observed, kappa)
    return table


def _chance_agreement(own: Sequence[float], majorities: Sequence[float], numeric: bool) -> float:
    """Agreement of independent draws from the two vote distributions."""
    own_freq = collections.Counter(own)
    majority_freq = collections.Counter(majorities)
    total = len(own) * len(majorities)
    return sum(a * b for x, a in own_freq.items() for m, b in majority_freq.items() if agrees(x, m, numeric)) / total


def check_annotators(examples: Sequence[TextExample], column: str, purpose: str) -> None:
    """Raises ``ValueError`` naming the file when annotator QC cannot work: no annotator
    column, one annotator only, or no item judged by two annotators."""
    source = source_of(examples[0].where) if examples else "the data"
    annotators = sorted({example.annotator for example in examples if example.annotator is not None})
    if not annotators:
        raise ValueError(f"data: {source}: {purpose} needs an annotator per row, and no row has the column "
                         f"'{column}' (set data.annotators.column)")
    if len(annotators) == 1:
        raise ValueError(f"data: {source}: {purpose} needs two or more annotators judging the same items; "
                         f"column '{column}' names one annotator only ('{annotators[0]}')")


def apply_reliability(examples: list[TextExample], weight_by: str, min_agreement: float, column: str,
                      split: str) -> tuple[list[TextExample], dict[str, AnnotatorAgreement]]:
    """``data.annotators``: multiply each example's weight by its annotator's reliability
    (``weight_by: agreement``) and leave out the examples of annotators whose
    agreement is below ``min_agreement``. Examples without an annotator keep weight 1."""
    check_annotators(examples, column, "data.annotators (weight_by / min_agreement)")
    votes, numeric = collect_votes(examples)
    table = agreement_table(votes, numeric)
    if all(row.compared == 0 for row in table.values()):
        raise ValueError(f"data: {source_of(examples[0].where)}: data.annotators needs items judged by two or more "
                         "annotators to measure agreement, and no item was")
    excluded = {name for name, row in table.items() if row.compared and row.agreement < min_agreement}
    kept = []
    for example in examples:
        if example.annotator in excluded:
            continue
        if weight_by == "agreement" and example.annotator is not None:
            weight = example.columns.get(WEIGHT, 1.0) * table[example.annotator].reliability
            example = dataclasses.replace(example, columns={**example.columns, WEIGHT: weight})
        kept.append(example)
    for row in table.values():
        note = "left out (min_agreement)" if row.annotator in excluded else f"weight {row.reliability:.2f}"
        log.info("data (%s): annotator %s: %d labels, agreement %.2f over %d, kappa %.2f: %s", split, row.annotator,
                 row.labels, row.agreement, row.compared, row.kappa, note)
    if excluded:
        log.warning("data (%s): left out %d examples of annotator(s) %s, agreement with the majority below "
                    "data.annotators.min_agreement %g", split, len(examples) - len(kept), ", ".join(sorted(excluded)),
                    min_agreement)
    if not kept:
        raise ValueError(f"data ({split}): data.annotators.min_agreement {min_agreement:g} leaves no example")
    return kept, table
