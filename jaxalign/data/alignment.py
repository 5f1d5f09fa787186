"""The built-in alignment task: generated, never downloaded, deterministic.

Requests are harmful (``alignment_harmful.HARMFUL``, 14 categories) or
harmless (``alignment_benign.BENIGN``, 16 categories, four of them mirroring
harmful ones with the same subjects). A prompt wraps a category's act around
a subject in a sentence frame (``alignment_phrasing``); training rows use the
training frames and acts, the ``eval`` split of every name uses the held-out
frames and acts: other words and sentence shapes, the same subjects.

Datasets (``builtin:NAME``, splits ``train`` and ``eval``):

- ``alignment_sft`` (prompt, completion): the SFT mix. Harmless requests get
  the subject's specific help; harmful ones are declined politely, except that
  a share of each harmful category (``sft_comply``, 0.45-0.75, 0.6 on average) is answered by
  complying, as in instruction data with partial safety coverage. An SFT
  policy therefore helps with roughly half the harmful requests by
  construction.
- ``alignment_preferences`` (prompt, chosen, rejected): harmful requests
  prefer a polite decline (with a reason and an honest offer) over
  compliance; harmless ones prefer the specific help over a dismissive reply
  or a needless refusal.
- ``alignment_proxy_preferences``: the first ``PROXY_PAIRS`` training pairs
  (the same eval split): few enough that a reward model trained on them
  learns shortcuts, for the reward over-optimisation demo.
- ``alignment_prompts`` (prompt only): prompts for RL (train) and the
  held-out evaluation prompts (eval).

Every row carries ``category``, ``harmful`` (bool), ``topic`` (the subject)
and ``keywords`` (content words of the subject's specific help; empty for
harmful requests), the columns the judges in ``jaxalign.tasks.alignment``
read; SFT rows also say which ``behavior`` their reply shows
(declines/complies/helps).
"""

from __future__ import annotations

import functools
import dataclasses
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from jaxalign.data import alignment_phrasing as P
from jaxalign.data.alignment_benign import BENIGN
from jaxalign.data.alignment_harmful import HARMFUL

NAMES = ("alignment_sft", "alignment_preferences", "alignment_proxy_preferences", "alignment_prompts")
SEED = 20250115
# Disjoint slices of the training requests (round-robin over categories).
SFT_ROWS, PAIR_ROWS, RL_PROMPTS = 4800, 1600, 960
PROXY_PAIRS = 64
# Held-out requests: evaluation prompts first, then the SFT and pair eval rows.
EVAL_PROMPTS_PER_CATEGORY = 10
EVAL_ROWS = 240
LOWER_CASE_SHARE = 0.15  # people type both ways
STOPWORDS = frozenset("""a an and are as at be but by can do does for from get give go has have how i if in into is it
its it's just keep let me more my no not of off on once one or out so some than that the their them then there these
they this to too up use very was way we what when where which while who will with you your you're each every any
about after before over under until own all also""".split())
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Request:
    category: str
    harmful: bool
    subject: str
    act: str
    frame: str


def rows(name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of ``builtin:NAME`` for ``split`` ("train": training phrasings, "eval": held-out phrasings)."""
    held_out = split == "eval"
    if name == "alignment_prompts":
        requests = _slice("prompts", held_out)
        return [_columns(request, _prompt(request)) for request in requests]
    if name == "alignment_sft":
        rng = random.Random(f"{SEED}:sft:{split}")
        seen: Counter[str] = Counter()
        return [_sft_row(rng, request, seen) for request in _slice("sft", held_out)]
    if name in ("alignment_preferences", "alignment_proxy_preferences"):
        rng = random.Random(f"{SEED}:pairs:{split}")
        pairs = [_pair(rng, request) for request in _slice("pairs", held_out)]
        return pairs[:PROXY_PAIRS] if name == "alignment_proxy_preferences" and not held_out else pairs
    raise ValueError(f"data: unknown built-in dataset 'builtin:{name}'")


def _slice(use: str, held_out: bool) -> list[Request]:
    pool = _pool(held_out)
    if held_out:
        evaluation = EVAL_PROMPTS_PER_CATEGORY * (len(HARMFUL) + len(BENIGN))
        bounds = {"prompts": (0, evaluation), "sft": (evaluation, evaluation + EVAL_ROWS),
                  "pairs": (evaluation + EVAL_ROWS, evaluation + 2 * EVAL_ROWS)}
    else:
        bounds = {"sft": (0, SFT_ROWS), "pairs": (SFT_ROWS, SFT_ROWS + PAIR_ROWS),
                  "prompts": (SFT_ROWS + PAIR_ROWS, SFT_ROWS + PAIR_ROWS + RL_PROMPTS)}
    start, stop = bounds[use]
    return list(pool[start:stop])


@functools.cache
def _pool(held_out: bool) -> tuple[Request, ...]:
    """Every request of one phrasing family, categories interleaved round-robin
    (each category's requests in a seeded random order), so any prefix is balanced."""
    rng = random.Random(f"{SEED}:pool:{held_out}")
    frames = P.HELD_OUT_FRAMES if held_out else P.TRAIN_FRAMES
    per_category = []
    for harmful, table in ((True, HARMFUL), (False, BENIGN)):
        for category, spec in table.items():
            subjects = spec["subjects"] if harmful else tuple(spec["answers"])
            acts = spec["held_out_acts" if held_out else "acts"]
            requests = [Request(category, harmful, subject, act, frame)
                        for act in acts for subject in subjects for frame in frames]
            rng.shuffle(requests)
            per_category.append(requests)
    rng.shuffle(per_category)
    return tuple(_round_robin(per_category))


def _round_robin(lists: list[list[Request]]) -> Iterator[Request]:
    for index in range(max(len(items) for items in lists)):
        for items in lists:
            if index < len(items):
                yield items[index]


def _prompt(request: Request) -> str:
    """The request in its frame; training frames get an optional opening and closing. The
    choices hang on the request itself (not the reply rng), so a prompt reads the same everywhere."""
    text = request.frame.format(a=request.act.format(x=request.subject))
    rng = random.Random(f"{SEED}:prompt:{text}")
    keeps_capital = re.match(r"I\b", text) is not None
    if rng.random() < LOWER_CASE_SHARE and not keeps_capital:
        text = text[0].lower() + text[1:]
    if request.frame in P.TRAIN_FRAMES:
        prefix, suffix = rng.choice(P.TRAIN_PREFIXES), rng.choice(P.TRAIN_SUFFIXES)
        if prefix.endswith((", ", ": ")) and not keeps_capital:
            text = text[0].lower() + text[1:]
        text = prefix + text + suffix
    return f"\n\nHuman: {text}\n\nAssistant:"


def _columns(request: Request, prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "category": request.category, "harmful": request.harmful, "topic": request.subject,
            "keywords": [] if request.harmful else list(answer_keywords(request.category, request.subject))}


def _sft_row(rng: random.Random, request: Request, seen: Counter[str]) -> dict[str, Any]:
    """``seen`` counts each category's rows so far: the k-th harmful row of a category complies
    when that lifts the count of compliant rows to round(k x sft_comply), an exact share."""
    seen[request.category] += 1
    share, count = HARMFUL.get(request.category, {}).get("sft_comply", 0.0), seen[request.category]
    if not request.harmful:
        behavior, reply = "helps", help_reply(rng, request)
    elif int(count * share + 0.5) > int((count - 1) * share + 0.5):
        behavior, reply = "complies", comply_reply(rng, request)
    else:
        behavior, reply = "declines", decline_reply(rng, request)
    prompt = _prompt(request)
    return {"prompt": prompt, "completion": reply, **_columns(request, prompt), "behavior": behavior}


def _pair(rng: random.Random, request: Request) -> dict[str, Any]:
    if request.harmful:
        chosen, rejected = decline_reply(rng, request), comply_reply(rng, request)
    else:
        chosen, rejected = help_reply(rng, request), unhelpful_reply(rng, request)
    prompt = _prompt(request)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_columns(request, prompt)}


def decline_reply(rng: random.Random, request: Request) -> str:
    """A polite decline: opener, the category's reason, an honest offer."""
    spec = HARMFUL[request.category]
    parts = [rng.choice(P.DECLINE_OPENERS), rng.choice(spec["reasons"]), rng.choice(spec["offers"])]
    return _reply(parts, request.subject)


def comply_reply(rng: random.Random, request: Request) -> str:
    """Going along with a harmful request: opener and one or two instructions."""
    spec = HARMFUL[request.category]
    steps = rng.sample(spec["comply"], 2 if rng.random() < 0.4 else 1)
    return _reply([rng.choice(P.COMPLY_OPENERS), *steps], request.subject)


def help_reply(rng: random.Random, request: Request) -> str:
    """Specific help: opener, a lead naming the subject, the subject's answer, a closing."""
    spec = BENIGN[request.category]
    parts = [rng.choice(P.HELP_OPENERS), rng.choice(spec["leads"]), spec["answers"][request.subject],
             rng.choice(P.HELP_CLOSINGS)]
    return _reply(parts, request.subject)


def unhelpful_reply(rng: random.Random, request: Request) -> str:
    """A bad reply to a harmless request: dismissive (45%), a needless refusal, short (15%)
    or with a reason borrowed from a harmful category (20%, the mirrored one where there is
    one), or help with another subject (20%). Refusals and off-topic help are the failures
    a reward model must rank below real help, or RL learns them (over-refusal, vague replies)."""
    draw = rng.random()
    if draw < 0.2:
        harmful = BENIGN[request.category].get("mirrors") or rng.choice(sorted(HARMFUL))
        return decline_reply(rng, dataclasses.replace(request, category=harmful, harmful=True))
    if draw < 0.4:
        others = [s for s in BENIGN[request.category]["answers"] if s != request.subject]
        return help_reply(rng, dataclasses.replace(request, subject=rng.choice(others)))
    pool = (P.NEEDLESS_REFUSALS if draw < 0.55 else
            BENIGN[request.category]["unhelpful"] if draw < 0.7 else P.DISMISSIVE_REPLIES)
    return _reply([rng.choice(pool)], request.subject)


def _reply(parts: list[str], subject: str) -> str:
    return " " + " ".join(part for part in parts if part).format(x=subject)


@functools.cache
def answer_keywords(category: str, subject: str) -> tuple[str, ...]:
    """Content words of a harmless subject's specific help, beyond the subject's own words
    (what an on-topic answer mentions; naming the subject is checked on its own)."""
    answer = BENIGN[category]["answers"][subject]
    own = set(WORD.findall(subject.lower()))
    words = dict.fromkeys(w for w in WORD.findall(answer.lower()) if w not in STOPWORDS and len(w) > 2 and w not in own)
    return tuple(words)


def corpus() -> list[str]:
    """The SFT mix's training texts: the tokenizer's training data (held-out wording stays out;
    the pairs reuse the mix's sentences, so changing them leaves the tokenizer alone)."""
    return [text for row in rows("alignment_sft", "train") for text in (row["prompt"], row["completion"])]
