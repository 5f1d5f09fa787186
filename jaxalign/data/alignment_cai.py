"""``builtin:alignment_cai_sft``: the alignment task's SFT mix plus the skills Constitutional
AI asks of a model, so the built-in task can run the whole CAI flow (docs/constitutional.md).

Bai et al. start from a model that already follows instructions: it can critique a reply
against a principle, rewrite it, and say which of two replies is better. The built-in
task's model is trained from scratch on ``alignment_sft`` and has never seen a critique
request, so its critiques are noise. This set adds, beside every row of that mix, worked
examples of the three skills in exactly the formats jaxalign's tools prompt with:

- a critique (``jaxalign.constitutional.transcript.critique_prompt`` with a principle of
  the default constitution, no few-shot prefix): compliance with a harmful request is
  called out, a decline of one or real help with a harmless one is called fine, a
  needless refusal or dismissal of a harmless request is called unhelpful;
- the revision that follows it: a polite decline for a harmful request, the subject's
  specific help for a harmless one (the first reply again when it was already right);
- a judge verdict (``jaxalign.constitutional.label.judge_prompt``): the letter of the
  better reply of a task pair, in either presentation order.

The critiques are templates over the request's subject; the principle drawn for a row
changes the request text, not the verdict, as the task has one notion of a good reply.
The ``alignment_sft`` rows themselves are unchanged, so the share of harmful requests the
model complies with is the same by construction, and so is the tokenizer.
"""

from __future__ import annotations

import random
from typing import Any

from jaxalign.data import alignment

NAMES = ("alignment_cai_sft",)
SEED = 20261203
SKILL_SHARE = 0.5  # share of the SFT mix's requests that also get a critique, revision and verdict
WRONG_FIRST_REPLY = 0.5  # share of skill rows whose first reply is the wrong behaviour (compliance / unhelpful)

COMPLY_CRITIQUES = (
    " The reply helps with {x}, which can hurt someone or break the law. It should decline.",
    " The reply gives steps for {x}. That helps cause harm, so it should say no and explain why.",
    " Helping with {x} is harmful. The reply should not give those steps; it should decline kindly.",
)
DECLINE_CRITIQUES = (
    " The reply declines to help with {x}, which is right. Nothing needs to change.",
    " Declining is the right call for {x}, and the reply says why. It can stay as it is.",
)
HELP_CRITIQUES = (
    " The request about {x} is harmless and the reply answers it with specifics. Nothing needs to change.",
    " The reply gives real help with {x}, a harmless request. It can stay as it is.",
)
UNHELPFUL_CRITIQUES = (
    " The request about {x} is harmless, but the reply does not answer it. It should give the steps.",
    " Nothing is wrong with asking about {x}. The reply should help instead of refusing or brushing it off.",
)


def rows(name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of ``builtin:alignment_cai_sft`` (prompt, completion) for ``split``."""
    if name not in NAMES:
        raise ValueError(f"data: unknown built-in dataset 'builtin:{name}'")
    # Imported here: jaxalign.constitutional's package imports the data layer (and jax).
    from jaxalign.constitutional.constitution import load_constitution

    constitution = load_constitution()
    rng = random.Random(f"{SEED}:{split}")
    out = []
    for row in alignment.rows("alignment_sft", split):
        out.append(row)
        if rng.random() < SKILL_SHARE:
            out.extend(_skill_rows(rng, row, constitution))
    return out


def _skill_rows(rng: random.Random, row: dict[str, Any], constitution: Any) -> list[dict[str, Any]]:
    from jaxalign.constitutional.label import judge_prompt
    from jaxalign.constitutional.transcript import critique_prompt, revision_prompt

    request = alignment.Request(row["category"], row["harmful"], row["topic"], act="", frame="")
    columns = {key: row[key] for key in ("category", "harmful", "topic", "keywords")}
    wrong = rng.random() < WRONG_FIRST_REPLY
    if request.harmful:
        first = alignment.comply_reply(rng, request) if wrong else alignment.decline_reply(rng, request)
        critiques = COMPLY_CRITIQUES if wrong else DECLINE_CRITIQUES
        revision = alignment.decline_reply(rng, request) if wrong else first
        better, worse = alignment.decline_reply(rng, request), alignment.comply_reply(rng, request)
    else:
        first = alignment.unhelpful_reply(rng, request) if wrong else alignment.help_reply(rng, request)
        critiques = UNHELPFUL_CRITIQUES if wrong else HELP_CRITIQUES
        revision = alignment.help_reply(rng, request) if wrong else first
        better, worse = alignment.help_reply(rng, request), alignment.unhelpful_reply(rng, request)
    critique = rng.choice(critiques).format(x=request.subject)
    principle = rng.choice(constitution.principles)
    judged = rng.choice(constitution.principles)
    better_first = rng.random() < 0.5
    pair = (better, worse) if better_first else (worse, better)
    return [
        {"prompt": critique_prompt(row["prompt"], first, [], principle, constitution), "completion": critique,
         **columns, "behavior": "critique"},
        {"prompt": revision_prompt(row["prompt"], first, [], principle, critique, constitution),
         "completion": revision, **columns, "behavior": "revision"},
        {"prompt": judge_prompt(row["prompt"], *pair, judged.judge_question or judged.revision_request),
         "completion": "A" if better_first else "B", **columns, "behavior": "judge"},
    ]

