"""The feedback formats: one rated reply, critiques, rankings as whole lists.

Each function takes the checked row reader of ``formats`` (``_Row``) and
returns ``TextExample`` s for one kind of batch:

* ``rating`` rows (``prompt``, ``completion``, ``rating``) -> one pointwise
  example each (``rating`` kept raw; normalised in ``data.ratings``);
* ``critique`` rows (``prompt``, ``response``, ``critique``, optional
  ``revision``) -> a revision pair (revision preferred over the response) for
  preference and reward batches, or a critique-conditioned SFT example
  (``data.critique_sft``);
* ``ranking`` rows -> one listwise example with every reply, best first
  (Plackett-Luce), where ties and repeated replies are errors.
"""

from __future__ import annotations

from typing import Any

from jaxalign.data.columns import check_rating
from jaxalign.data.errors import Counter
from jaxalign.data.example import TextExample, one_piece

# Critique-conditioned prompts, in the HH transcript style of the built-in data.
CRITIQUE_TAG = "\n\nCritique:"
REVISION_TAG = "\n\nRevision:"


def rated_reply(reader: Any, scale: list[float] | None) -> TextExample:
    """A ``rating`` row -> one pointwise example with its raw rating."""
    prompt, reply = reader.prompt_and_reply("completion")
    rating = check_rating(reader.where, "rating", reader.get("rating"), scale)
    return TextExample(prompt, one_piece(reply), reader.where, chat=reader.chat, rating=rating)


def rated_replies(reader: Any, scale: list[float] | None) -> list[TextExample]:
    """A ``ratings`` row (``responses``, ``scores``) -> one pointwise example per response."""
    responses = reader.responses("responses")
    scores = reader.get("scores")
    if not isinstance(scores, list) or len(scores) != len(responses):
        raise reader.fail("scores", "wrong_type", f"expected a list of {len(responses)} numbers")
    examples = []
    for response, score in zip(responses, scores):
        prompt, reply = reader.prompt_and_reply("responses", response)
        examples.append(TextExample(prompt, one_piece(reply), reader.where, chat=reader.chat,
                                    rating=check_rating(reader.where, "scores", score, scale)))
    return examples


def ranked_list(reader: Any) -> TextExample:
    """A ``ranking`` row -> one example whose completions are the replies, best first."""
    ranking = reader.responses("ranking")
    replies = []
    for position, reply in enumerate(ranking):
        if isinstance(reply, list) and reply and not isinstance(reply[0], dict):
            raise reader.fail("ranking", "tied_ranking",
                              f"replies tied at position {position + 1}; Plackett-Luce needs a strict order "
                              "(train on pairs, algo rm with bradley_terry, to use ties)")
        prompt, text = reader.prompt_and_reply("ranking", reply)
        if text in replies:
            raise reader.fail("ranking", "duplicate_replies",
                              f"reply {position + 1} repeats reply {replies.index(text) + 1}; a ranking lists "
                              "each reply once")
        replies.append(text)
    return TextExample(prompt, tuple(one_piece(text)[0] for text in replies), reader.where, chat=reader.chat)


def critique_examples(reader: Any, kind: str, sft_mode: str, stats: Counter) -> list[TextExample]:
    """A ``critique`` row -> a revision pair (preference, reward) or an SFT example."""
    prompt = reader.text("prompt", role="prompt")
    response = reader.text("response")
    critique = reader.text("critique")
    revision = reader.text("revision") if reader.value.get("revision") is not None else None
    if kind == "prompt":
        return [TextExample(prompt, (), reader.where)]
    if kind in ("preference", "reward"):
        if revision is None:
            stats.add("critique/no_revision")  # usable for SFT (critique mode), not as a pair
            return []
        if revision == response:
            stats.add("pairs_skipped/identical_responses")
            return []
        return [TextExample(prompt, one_piece(revision) + one_piece(response), reader.where)]
    conditioned = f"{prompt}{response}{CRITIQUE_TAG}"
    if sft_mode == "critique":
        return [TextExample(conditioned, one_piece(_spaced(critique)), reader.where)]
    if revision is None:
        stats.add("critique/no_revision")
        return []
    if sft_mode == "revision":
        return [TextExample(prompt, one_piece(revision), reader.where)]
    return [TextExample(f"{conditioned} {critique.strip()}{REVISION_TAG}", one_piece(_spaced(revision)), reader.where)]


def _spaced(text: str) -> str:
    """Replies follow the prompt's ``Tag:`` after one space, as in the HH transcripts."""
    return text if text[:1].isspace() else " " + text
