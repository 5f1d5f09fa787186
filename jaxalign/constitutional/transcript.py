"""Prompt assembly for critique and revision: pure functions of strings.

A critique prompt is the few-shot block (the constitution's examples, shared by every
row and prefilled once) followed by this row's transcript::

    <prompt><first reply>

    Critique request: <principle's critique request>

    Critique:<critique>

    Revision request: <principle's revision request>

    Revision:<revision>
    ... (earlier rounds) ...

    Critique request: <this round's request>

    Critique:                          <- the critique is generated here

and the revision prompt is the same with this round's critique and revision request
appended, ending in ``Revision:``. Examples are separated by a ``-----`` line.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxalign.constitutional.constitution import Constitution, Principle

EXAMPLE_SEPARATOR = "\n\n-----"


@dataclasses.dataclass(frozen=True)
class Round:
    """One finished critique -> revision round."""

    principle: str
    critique: str
    revision: str


def critique_block(principle: Principle) -> str:
    return f"\n\nCritique request: {principle.critique_request}\n\nCritique:"


def revision_block(principle: Principle) -> str:
    return f"\n\nRevision request: {principle.revision_request}\n\nRevision:"


def _rounds_text(rounds: Sequence[Round], constitution: Constitution) -> str:
    return "".join(critique_block(constitution.principle(r.principle)) + r.critique
                   + revision_block(constitution.principle(r.principle)) + r.revision for r in rounds)


def few_shot_prefix(constitution: Constitution) -> str:
    """The examples as finished transcripts, each followed by the separator ('' without examples)."""
    return "".join(example.prompt + example.reply
                   + _rounds_text([Round(example.principle, example.critique, example.revision)], constitution)
                   + EXAMPLE_SEPARATOR for example in constitution.examples)


def critique_prompt(prompt: str, first_reply: str, rounds: Sequence[Round], principle: Principle,
                    constitution: Constitution) -> str:
    """The row's transcript so far, asking for a critique against ``principle`` (without the few-shot prefix)."""
    return prompt + first_reply + _rounds_text(rounds, constitution) + critique_block(principle)


def revision_prompt(prompt: str, first_reply: str, rounds: Sequence[Round], principle: Principle, critique: str,
                    constitution: Constitution) -> str:
    """``critique_prompt`` plus this round's critique, asking for the revision."""
    return critique_prompt(prompt, first_reply, rounds, principle, constitution) + critique + revision_block(principle)


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
