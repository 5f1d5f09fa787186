"""``TextExample``: one training example as text, the unit every format produces."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from jaxalign.data.chat import Piece


@dataclasses.dataclass(frozen=True)
class TextExample:
    """One training example as text. ``completions[b]`` is a tuple of
    ``(text, in_loss)`` pieces; most completions are a single piece. A pair
    holds (chosen, rejected); a ranking its replies best first.

    ``columns`` are per-example numbers that reach the losses as batch columns
    ``[R, K]`` (``weight``, ``preference_strength``, ``rating``, ``rating_level``;
    see ``jaxalign.data.columns``). ``annotator`` names who labelled the row and
    ``rating`` keeps a rated reply's raw rating (both for annotator statistics).
    """

    prompt: str
    completions: tuple[tuple[Piece, ...], ...]
    where: str
    margin: float | None = None
    label: bool | None = None
    chat: bool = False  # rendered by a chat template, which ends the reply itself: no EOS appended
    columns: Mapping[str, float] = dataclasses.field(default_factory=dict)
    annotator: str | None = None
    rating: float | None = None

    def reply_texts(self) -> tuple[str, ...]:
        """Each completion's text, pieces joined."""
        return tuple("".join(text for text, _ in pieces) for pieces in self.completions)


def one_piece(text: str) -> tuple[tuple[Piece, ...], ...]:
    """A single completion made of one piece in the loss."""
    return (((text, True),),)
