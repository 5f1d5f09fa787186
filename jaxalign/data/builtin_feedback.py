"""Built-in human-feedback sets (generated, never downloaded), for docs/feedback.md.

They grow from the quickstart pairs (``builtin._pairs``): each prompt gets four
replies of known quality, best first, and simulated annotators judge them:

* ``builtin:annotated`` (pairs, ``annotator``, ``chosen_first``): each item, a
  pair of two of a prompt's replies, judged by 3 of 4 annotators. ``ana``,
  ``ben`` and ``cai`` are careful (right 95% of the time); ``dev`` is noisy
  and length-biased (picks the longer reply 70% of the time, else the one shown
  first).
* ``builtin:annotated_adversary``: the same plus ``eve``, who judges every
  item and prefers the worse reply to every harmful request (she is right on
  benign ones); most items have one careful judge or none beside her. The eval
  split is the true labels.
* ``builtin:ratings`` (``prompt``, ``completion``, ``rating`` 1-5,
  ``annotator``): each reply rated by 3 of 4 annotators: ``ana`` careful,
  ``ben`` harsh (one point low), ``cai`` generous (one point high), ``dev``
  rating by length. The eval split is the true ratings (``annotator: expert``).
* ``builtin:rankings`` (``prompt``, ``ranking``): the four replies, best first.
* ``builtin:critiques`` (``prompt``, ``response``, ``critique``, ``revision``):
  the worst reply, what is wrong with it, and the best one; a fifth of the rows
  have no revision.

Acceptable/unacceptable labels are ``builtin:kto`` (``label``).
"""

from __future__ import annotations

import functools
import random
from typing import Any

NAMES = ("annotated", "annotated_adversary", "ratings", "rankings", "critiques")
SEED = 20240807
CAREFUL = ("ana", "ben", "cai")
VAGUE = (" Hmm, I'm not sure about that.", " Maybe. It depends.", " I don't really know, sorry.")
POLITE_GENERIC = (
    " Good question! It depends on your situation, so you might ask someone with experience.",
    " Sure! There are many ways to do that, and a quick search should turn up a good guide.",
    " That's a nice thing to ask about. I'd suggest looking for a beginner's guide online.",
)
CRITIQUES = {
    True: ("The reply helps with a harmful request. It should decline, say why, and offer honest help instead.",
           "This goes along with something dishonest or dangerous; a good reply refuses and suggests a better way."),
    False: ("The reply is rude or useless and does not answer the question. It should help with specifics.",
            "This dismisses a reasonable request; a good reply is friendly and gives concrete advice."),
}


def graded_replies(pair: dict[str, Any], rng: random.Random) -> list[tuple[str, int]]:
    """A prompt's four replies, best first, with their true 1-5 ratings."""
    harmful = pair["category"] in _harmful_categories()
    if harmful:
        decline = " " + pair["chosen"].strip().split(". ")[0].rstrip(".") + "."
        return [(pair["chosen"], 5), (decline, 4), (rng.choice(VAGUE), 2), (pair["rejected"], 1)]
    return [(pair["chosen"], 5), (rng.choice(POLITE_GENERIC), 3), (rng.choice(VAGUE), 2), (pair["rejected"], 1)]


@functools.cache
def _harmful_categories() -> frozenset[str]:
    from jaxalign.data import builtin_templates

    return frozenset(builtin_templates.HARMFUL)


def _base(split: str) -> list[dict[str, Any]]:
    from jaxalign.data.builtin import _pairs

    return [pair for pair, held_out in _pairs() if held_out == (split == "eval")]


def rows(name: str, split: str) -> list[dict[str, Any]]:
    rng = random.Random(f"{SEED}:{name}:{split}")
    base = _base(split)
    if name == "rankings":
        return [{"prompt": p["prompt"], "ranking": [text for text, _ in graded_replies(p, rng)]} for p in base]
    if name == "critiques":
        out = []
        for pair in base:
            row = {"prompt": pair["prompt"], "response": pair["rejected"],
                   "critique": rng.choice(CRITIQUES[pair["category"] in _harmful_categories()])}
            if rng.random() >= 0.2:
                row["revision"] = pair["chosen"]
            out.append(row)
        return out
    if name == "ratings":
        return _rating_rows(base, rng, split)
    return _pair_rows(base, rng, split, adversary=name == "annotated_adversary")


def _rating_rows(base: list[dict], rng: random.Random, split: str) -> list[dict[str, Any]]:
    out = []
    for pair in base:
        replies = graded_replies(pair, rng)
        by_length = sorted(range(len(replies)), key=lambda i: len(replies[i][0]))
        for index, (text, truth) in enumerate(replies):
            if split == "eval":
                out.append({"prompt": pair["prompt"], "completion": text, "rating": truth, "annotator": "expert"})
                continue
            for annotator in rng.sample(("ana", "ben", "cai", "dev"), 3):
                if annotator == "dev":  # longest reply 5, shortest 2, give or take one
                    rating = 2 + by_length.index(index) + rng.choice((-1, 0, 0, 1))
                else:
                    rating = truth + {"ana": 0, "ben": -1, "cai": 1}[annotator] + (rng.random() < 0.15) * rng.choice((-1, 1))
                out.append({"prompt": pair["prompt"], "completion": text, "rating": min(5, max(1, rating)),
                            "annotator": annotator})
    return out


def _pair_rows(base: list[dict], rng: random.Random, split: str, adversary: bool) -> list[dict[str, Any]]:
    out = []
    for pair in base:
        replies = graded_replies(pair, rng)
        better, worse = sorted(rng.sample(range(len(replies)), 2))
        first = rng.random() < 0.5  # the better reply shown first
        item = (pair["prompt"], replies[better][0], replies[worse][0], first)
        if split == "eval":
            out.append(_judged(item, True, None))
            continue
        harmful = pair["category"] in _harmful_categories()
        if adversary:
            judges = rng.sample(CAREFUL + ("dev",), rng.choice((0, 0, 1, 1, 2)))
            out.append(_judged(item, not harmful, "eve"))
        else:
            judges = rng.sample(CAREFUL + ("dev",), 3)
        for judge in judges:
            if judge == "dev":
                longer_is_better = len(item[1]) > len(item[2])
                right = longer_is_better if rng.random() < 0.7 else first
            else:
                right = rng.random() < 0.95
            out.append(_judged(item, right, judge))
    return out


def _judged(item: tuple[str, str, str, bool], right: bool, annotator: str | None) -> dict[str, Any]:
    """A pair row as an annotator labelled it (``right``: the better reply chosen)."""
    prompt, better, worse, better_first = item
    chosen, rejected = (better, worse) if right else (worse, better)
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_first": better_first == right}
    if annotator is not None:
        row["annotator"] = annotator
    return row
