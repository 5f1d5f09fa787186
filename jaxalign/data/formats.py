"""Rows -> canonical text examples (TRL's dataset formats).

A ``TextExample`` is a prompt plus 0 (prompt-only), 1 (SFT, unpaired) or 2
(chosen, rejected) completions, each a sequence of text pieces flagged in or
out of the loss. Conversational rows are rendered here with the chat template,
so everything downstream sees text. Which formats feed which kind of batch:

=================== =====================================================
kind                formats
=================== =====================================================
preference          preference, implicit_preference, ratings, ranking,
                    critique (revision preferred over the response)
reward              the same as preference (batches without target arrays:
                    a reward model reads only the last token of each reply)
pointwise           rating, ratings (each response), unpaired: one reply
                    per example, for reward models trained on ratings
listwise            ranking: every reply of a row, best first
unpaired            unpaired; preference, implicit_preference (each pair ->
                    one desirable + one undesirable example)
sft                 prompt_completion, messages, text; preference,
                    implicit_preference (the chosen reply); critique
prompt              prompt_only and every format with a prompt
=================== =====================================================

Configured row columns (``data.weight_column``, ``data.strength_column``) and
the annotator id travel with every example a row gives (``columns.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
from typing import Any, Callable, Sequence

from jaxalign.data import formats_feedback as feedback
from jaxalign.data.chat import ChatRenderer
from jaxalign.data.columns import check_rating, row_annotator, row_columns
from jaxalign.data.errors import Counter, DataError
from jaxalign.data.example import TextExample, one_piece
from jaxalign.data.report import SkippedRows, explain_partial_rows, source_of
from jaxalign.data.sources import RawRow

KINDS = ("preference", "reward", "pointwise", "listwise", "unpaired", "sft", "prompt")
PAIRED_FORMATS = ("preference", "implicit_preference")
FORMATS_FOR_KIND = {
    "preference": ("preference", "implicit_preference", "ratings", "ranking", "critique"),
    "reward": ("preference", "implicit_preference", "ratings", "ranking", "critique"),
    "pointwise": ("rating", "ratings", "unpaired"),
    "listwise": ("ranking",),
    "unpaired": ("unpaired", *PAIRED_FORMATS),
    "sft": ("prompt_completion", "messages", "text", *PAIRED_FORMATS, "critique"),
    "prompt": ("prompt_only", "preference", "implicit_preference", "ratings", "ranking", "unpaired",
               "prompt_completion", "messages", "rating", "critique"),
}
# Detection order matters: the first format whose columns are all present wins.
FORMAT_COLUMNS = (
    ("messages", ("messages",)),
    ("ratings", ("prompt", "responses", "scores")),
    ("ranking", ("prompt", "ranking")),
    ("critique", ("prompt", "response", "critique")),
    ("preference", ("prompt", "chosen", "rejected")),
    ("implicit_preference", ("chosen", "rejected")),
    ("rating", ("prompt", "completion", "rating")),
    ("unpaired", ("prompt", "completion", "label")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
    ("prompt_only", ("prompt",)),
)
# A speaker tag at a line start ("\n\nAssistant:", "\nUser:"): implicit prompts end after the last one.
SPEAKER_TAG = re.compile(r"\n\n?[A-Z][A-Za-z]{0,30}:")
_FROM_ROW = object()  # "read the field from the row" (None is a value a list may hold)
DETECT_ROWS = 100  # objects read to detect the format: a bad first row must not decide it


def _row_format(value: dict) -> str | None:
    for name, columns in FORMAT_COLUMNS:
        if all(column in value for column in columns):
            return name
    return None


def detect_format(rows: Sequence[RawRow]) -> str:
    """The format most of the first ``DETECT_ROWS`` readable rows have the columns
    of (ties go to the earlier format in ``FORMAT_COLUMNS``), so one odd row at
    the top of a file does not decide it. Errors name the file."""
    objects = [row for row in rows if isinstance(row.value, dict)][:DETECT_ROWS]
    votes = collections.Counter(fmt for row in objects if (fmt := _row_format(row.value)) is not None)
    if votes:
        order = [name for name, _ in FORMAT_COLUMNS]
        return max(votes, key=lambda fmt: (votes[fmt], -order.index(fmt)))
    if objects:
        known = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMAT_COLUMNS)
        raise DataError(objects[0].where, "unknown_format",
                        f"cannot tell the format from columns {sorted(objects[0].value)}; expected one of: {known}")
    if not rows:
        raise ValueError("data: no rows to detect the format from")
    first = rows[0]
    why = first.error or f"a row must be a JSON object with columns, got {type(first.value).__name__}"
    raise ValueError(
        f"data: {source_of(first.where)}: no row could be read as a JSON object with columns (line 1: {why}); "
        "jaxalign reads JSON lines (.jsonl, .jsonl.gz), a JSON array (.json) or parquet, one example per row")


def check_kind(fmt: str, kind: str, source: str | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(f"data: kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if fmt not in FORMATS_FOR_KIND[kind]:
        where = f"{source}: " if source else ""
        raise ValueError(
            f"data: {where}format '{fmt}' cannot feed {kind} training; it needs one of {', '.join(FORMATS_FOR_KIND[kind])}"
        )


def format_rows(
    rows: Sequence[RawRow], fmt: str, kind: str, renderer: Callable[[], ChatRenderer], on_bad_row: str, stats: Counter,
    *, max_skipped_fraction: float = 1.0, split: str | None = None, cfg: Any = None,
) -> list[TextExample]:
    """Formats every row; bad rows raise ``DataError`` or, with ``on_bad_row ==
    "skip"``, are counted in ``stats`` under ``skipped/<reason>`` and logged per
    file with the first few reasons; more than ``max_skipped_fraction`` of a
    file's rows skipped is an error. ``cfg`` (a ``DataConfig``) names the
    row columns that reach the losses and the declared rating scale."""
    check_kind(fmt, kind, source_of(rows[0].where) if rows else None)
    examples: list[TextExample] = []
    skipped = SkippedRows()
    for row in rows:
        stats.add("rows_read")
        skipped.row_read(row.where)
        try:
            made = row_examples(row, fmt, kind, renderer, stats, cfg)
        except DataError as err:
            if on_bad_row == "raise":
                raise
            stats.add("rows_skipped")
            stats.add(f"skipped/{err.reason}")
            skipped.row_skipped(err)
            continue
        stats.add("rows_kept")
        examples.extend(made)
    stats.add("examples", len(examples))
    skipped.report(max_skipped_fraction, split)
    explain_partial_rows(stats.snapshot(), split)
    return examples


def row_examples(
    row: RawRow, fmt: str, kind: str, renderer: Callable[[], ChatRenderer], stats: Counter, cfg: Any = None,
) -> list[TextExample]:
    """One row -> its examples for ``kind`` (a ratings row gives several pairs),
    each carrying the row's configured columns and annotator."""
    if row.error is not None:
        raise DataError(row.where, "bad_json", row.error)
    if not isinstance(row.value, dict):
        raise DataError(row.where, "not_an_object", f"a row must be an object with columns, got {type(row.value).__name__}")
    reader = _Row(row.where, row.value, renderer, None if cfg is None else cfg.rating_scale)
    made = _examples(reader, fmt, kind, stats, cfg)
    columns = row_columns(row.where, row.value, cfg, kind)
    annotator = row_annotator(row.where, row.value, cfg)
    if columns or annotator is not None:
        made = [dataclasses.replace(example, columns={**example.columns, **columns}, annotator=annotator)
                for example in made]
    return made


def _examples(reader: "_Row", fmt: str, kind: str, stats: Counter, cfg: Any) -> list[TextExample]:
    if fmt == "critique":
        return feedback.critique_examples(reader, kind, "revise" if cfg is None else cfg.critique_sft, stats)
    if kind == "pointwise":
        if fmt == "rating":
            return [feedback.rated_reply(reader, reader.scale)]
        if fmt == "ratings":
            return feedback.rated_replies(reader, reader.scale)
        prompt, reply = reader.prompt_and_reply("completion")
        return [TextExample(prompt, _one(reply), reader.where, label=reader.label(), chat=reader.chat)]
    if kind == "listwise":
        return [feedback.ranked_list(reader)]
    if kind == "prompt":
        return [TextExample(reader.prompt_for_generation(fmt), (), reader.where, chat=reader.chat)]
    if fmt in PAIRED_FORMATS or fmt in ("ratings", "ranking"):
        pairs = reader.pairs(fmt, stats)
        if kind == "unpaired":
            return [dataclasses.replace(pair, completions=(reply,), label=label, margin=None)
                    for pair in pairs for reply, label in zip(pair.completions, (True, False))]
        if kind == "sft":
            return [dataclasses.replace(pair, completions=pair.completions[:1], margin=None) for pair in pairs]
        return pairs
    if fmt == "unpaired":
        prompt, reply = reader.prompt_and_reply("completion")
        return [TextExample(prompt, _one(reply), reader.where, label=reader.label(), chat=reader.chat)]
    if fmt == "prompt_completion":
        prompt, reply = reader.prompt_and_reply("completion")
        return [TextExample(prompt, _one(reply), reader.where, chat=reader.chat)]
    if fmt == "messages":
        prompt, pieces = reader.conversation()
        return [TextExample(prompt, (tuple(pieces),), reader.where, chat=True)]
    if fmt == "text":
        return [TextExample("", _one(reader.text("text")), reader.where)]
    raise AssertionError(f"unhandled format {fmt}")


class _Row:
    """Typed, checked access to one row's fields; every failure names the field."""

    def __init__(self, where: str, value: dict, renderer: Callable[[], ChatRenderer], scale: list[float] | None = None):
        self.where = where
        self.value = value
        self._renderer = renderer
        self.scale = scale  # data.rating_scale: ratings outside it are errors
        self.chat = isinstance(value.get("prompt", value.get("chosen", value.get("messages"))), list)

    def fail(self, field: str, reason: str, detail: str) -> DataError:
        return DataError(self.where, reason, detail, field)

    def get(self, field: str) -> Any:
        if field not in self.value or self.value[field] is None:
            raise self.fail(field, "missing_field", "missing")
        return self.value[field]

    def text(self, field: str, value: Any = _FROM_ROW, *, role: str = "response") -> str:
        value = self.get(field) if value is _FROM_ROW else value
        if not isinstance(value, str):
            raise self.fail(field, "wrong_type", f"expected a string, got {type(value).__name__}")
        if role == "response" and not value.strip():
            raise self.fail(field, "empty_response", "empty response")
        if role == "prompt" and not value.strip():
            raise self.fail(field, "empty_prompt", "empty prompt")
        return value

    def messages(self, field: str, value: Any = _FROM_ROW) -> list[dict[str, str]]:
        value = self.get(field) if value is _FROM_ROW else value
        if not isinstance(value, list) or not value:
            raise self.fail(field, "wrong_type", f"expected a non-empty list of {{role, content}} messages, got {_describe(value)}")
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise self.fail(field, "wrong_type", f"message {i} is not a {{role: str, content: str}} object: {message!r:.80}")
        if value[-1]["role"] == "assistant" and not value[-1]["content"].strip():
            raise self.fail(field, "empty_response", "empty assistant message")
        return value

    def renderer(self) -> ChatRenderer:
        return self._renderer()

    # ---- prompts and replies -------------------------------------------------
    def prompt_and_reply(self, reply_field: str, reply: Any = _FROM_ROW) -> tuple[str, str]:
        """Prompt text and reply text; conversational rows rendered with the template."""
        reply = self.get(reply_field) if reply is _FROM_ROW else reply
        if not self.chat:
            return self.text("prompt", role="prompt"), self.text(reply_field, reply)
        prompt = self.messages("prompt")
        reply_messages = self.messages(reply_field, reply)
        return self.renderer().prompt_and_completion(prompt, reply_messages, self.where, reply_field)

    def label(self) -> bool:
        label = self.get("label")
        if isinstance(label, bool):
            return label
        if isinstance(label, int) and label in (0, 1):
            return bool(label)
        raise self.fail("label", "wrong_type", f"expected a bool (desirable or not), got {label!r:.40}")

    def conversation(self) -> tuple[str, list]:
        return self.renderer().conversation_pieces(self.messages("messages"), self.where, "messages")

    def prompt_for_generation(self, fmt: str) -> str:
        if fmt == "messages":
            messages = self.messages("messages")
            last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            if last_reply == 0:
                raise self.fail("messages", "empty_prompt", "no message before the first assistant reply")
            return self.renderer().render(messages[:last_reply], self.where, "messages", generation_prompt=True)
        if fmt == "implicit_preference":
            return self.pairs(fmt, Counter())[0].prompt
        if self.chat:
            return self.renderer().render(self.messages("prompt"), self.where, "prompt", generation_prompt=True)
        return self.text("prompt", role="prompt")

    # ---- pairs ---------------------------------------------------------------
    def pairs(self, fmt: str, stats: Counter) -> list[TextExample]:
        if fmt == "preference":
            return [self._pair(self.get("chosen"), self.get("rejected"), "chosen", "rejected")]
        if fmt == "implicit_preference":
            return [self._implicit_pair()]
        if fmt == "ratings":
            return self._rating_pairs(stats)
        return self._ranking_pairs(stats)

    def _pair(self, chosen: Any, rejected: Any, chosen_field: str, rejected_field: str,
              margin: float | None = None) -> TextExample:
        prompt, chosen_text = self.prompt_and_reply(chosen_field, chosen)
        _, rejected_text = self.prompt_and_reply(rejected_field, rejected)
        if chosen_text == rejected_text:
            raise self.fail(rejected_field, "chosen_equals_rejected", "chosen equals rejected")
        return TextExample(prompt, _one(chosen_text) + _one(rejected_text), self.where, margin, chat=self.chat)

    def _implicit_pair(self) -> TextExample:
        chosen, rejected = self.get("chosen"), self.get("rejected")
        if self.chat:
            chosen, rejected = self.messages("chosen"), self.messages("rejected")
            if chosen == rejected:
                raise self.fail("rejected", "chosen_equals_rejected", "chosen equals rejected")
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            if shared == 0:
                raise self.fail("chosen", "no_common_prompt", "chosen and rejected start with different messages")
            prompt_text, chosen_text = self.renderer().prompt_and_completion(chosen[:shared], chosen[shared:], self.where, "chosen")
            _, rejected_text = self.renderer().prompt_and_completion(chosen[:shared], rejected[shared:], self.where, "rejected")
            return TextExample(prompt_text, _one(chosen_text) + _one(rejected_text), self.where, chat=True)
        chosen, rejected = self.text("chosen"), self.text("rejected")
        if chosen == rejected:
            raise self.fail("rejected", "chosen_equals_rejected", "chosen equals rejected")
        prompt = implicit_prompt(chosen, rejected)
        if not prompt.strip():
            raise self.fail("chosen", "no_common_prompt", "chosen and rejected share no prompt")
        chosen_reply, rejected_reply = chosen[len(prompt):], rejected[len(prompt):]
        for field, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
            if not reply.strip():
                raise self.fail(field, "empty_response", "empty response after the shared prompt")
        return TextExample(prompt, _one(chosen_reply) + _one(rejected_reply), self.where)

    def responses(self, field: str) -> list[Any]:
        responses = self.get(field)
        if not isinstance(responses, list) or len(responses) < 2:
            raise self.fail(field, "wrong_type", f"expected a list of at least 2 responses, got {_describe(responses)}")
        return responses

    def _rating_pairs(self, stats: Counter) -> list[TextExample]:
        responses, scores = self.responses("responses"), self.get("scores")
        if not isinstance(scores, list) or len(scores) != len(responses):
            raise self.fail("scores", "wrong_type", f"expected a list of {len(responses)} numbers, got {_describe(scores)}")
        for score in scores:
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise self.fail("scores", "wrong_type", f"expected finite numbers, got {score!r:.40}")
            check_rating(self.where, "scores", score, self.scale)
        order = sorted(range(len(responses)), key=lambda i: -scores[i])
        candidates = [(i, j) for a, i in enumerate(order) for j in order[a + 1:] if scores[i] > scores[j]]
        ties = sum(scores[i] == scores[j] for a, i in enumerate(order) for j in order[a + 1:])
        if ties:
            stats.add("pairs_skipped/tied", ties)
        return self._pairs_from(responses, candidates, "responses", stats, lambda i, j: float(scores[i] - scores[j]))

    def _ranking_pairs(self, stats: Counter) -> list[TextExample]:
        """Every better/worse pair; an inner list of replies (``[a, [b, c], d]``) is a tie, giving no pair."""
        replies, group = [], []
        for position, entry in enumerate(self.responses("ranking")):
            tied = isinstance(entry, list) and bool(entry) and not isinstance(entry[0], dict)
            for reply in entry if tied else [entry]:
                replies.append(reply)
                group.append(position)
        candidates = [(i, j) for i in range(len(replies)) for j in range(i + 1, len(replies)) if group[i] < group[j]]
        ties = sum(group[i] == group[j] for i in range(len(replies)) for j in range(i + 1, len(replies)))
        if ties:
            stats.add("pairs_skipped/tied", ties)
        return self._pairs_from(replies, candidates, "ranking", stats, lambda i, j: None)

    def _pairs_from(self, responses, candidates, field, stats, margin) -> list[TextExample]:
        pairs = []
        for i, j in candidates:
            try:
                pairs.append(self._pair(responses[i], responses[j], field, field, margin(i, j)))
            except DataError as err:
                if err.reason != "chosen_equals_rejected":
                    raise
                stats.add("pairs_skipped/identical_responses")  # the row's other pairs stay
        if not pairs:
            raise self.fail(field, "no_pairs", "no two responses differ in score or text")
        return pairs


def implicit_prompt(chosen: str, rejected: str) -> str:
    """The shared prompt of two full transcripts.

    Rule: take their longest common prefix; if it contains a speaker tag (a
    line start, a capitalised word and a colon: ``\\n\\nAssistant:``), the prompt
    ends right after the last one, so replies that begin alike ("I think...")
    stay whole. Otherwise cut back to a word boundary: trailing whitespace and
    a half-shared word go to the completions, which then start with their
    leading space (as BPE tokenizes running text).
    """
    common = os.path.commonprefix([chosen, rejected])
    tags = list(SPEAKER_TAG.finditer(common))
    if tags:
        return common[: tags[-1].end()]
    if common != common.rstrip():
        return common.rstrip()
    following = (chosen[len(common):len(common) + 1], rejected[len(common):len(common) + 1])
    if all(not char or char.isspace() for char in following):
        return common  # the replies diverge at a word boundary already
    cut = max(common.rfind(char) for char in " \t\n")
    return common[:cut].rstrip() if cut > 0 else common


_one = one_piece


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__
