"""Running totals of a constitutional run (kept in progress.json across resumes) and its closing summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxalign.constitutional.sampling import Sample

SUMMARY = "summary.json"


def _words(text: str) -> int:
    return len(text.split())


@dataclasses.dataclass
class Totals:
    prompts: int = 0
    changed: int = 0  # rows whose final revision differs from the first reply (= pairs written)
    rounds_run: int = 0
    first_words: int = 0
    critique_words: int = 0
    final_words: int = 0
    replies_cut: int = 0  # first replies that hit max_reply_tokens
    revisions_cut: int = 0
    empty_revisions: int = 0  # the reply was kept
    stopped_transcript: int = 0  # rows that stopped revising at max_transcript_tokens
    prompts_truncated: int = 0
    # this session only (not accumulated): where it resumed and how many rows of a killed batch it redid
    resumed_at: int = 0
    redone_rows: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Totals":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("resumed_at", "redone_rows")}

    def add_round(self, critique: Sample, revision: Sample) -> None:
        self.rounds_run += 1
        self.critique_words += _words(critique.text)
        self.revisions_cut += revision.finish_reason == "length"

    def add_row(self, first: Sample, final: str, changed: bool, stopped: str | None) -> None:
        self.prompts += 1
        self.changed += changed
        self.first_words += _words(first.text)
        self.final_words += _words(final)
        self.replies_cut += first.finish_reason == "length"
        self.stopped_transcript += stopped == "max_transcript_tokens"

    def metrics(self) -> dict[str, float]:
        rows, rounds = max(self.prompts, 1), max(self.rounds_run, 1)
        return {
            "prompts": self.prompts, "pairs": self.changed, "changed_share": self.changed / rows,
            "rounds_run": self.rounds_run, "mean_rounds": self.rounds_run / rows,
            "mean_words/first_reply": self.first_words / rows, "mean_words/critique": self.critique_words / rounds,
            "mean_words/final": self.final_words / rows, "replies_cut_share": self.replies_cut / rows,
            "revisions_cut_share": self.revisions_cut / rounds, "empty_revisions": self.empty_revisions,
            "stopped_at_max_transcript_tokens": self.stopped_transcript, "prompts_truncated": self.prompts_truncated,
        }

    def write(self, out_dir: str | Path) -> None:
        (Path(out_dir) / SUMMARY).write_text(json.dumps(self.metrics(), indent=1) + "\n")


def format_summary(totals: Totals, out_dir: str) -> str:
    m = totals.metrics()
    lines = [f"jaxalign: constitutional: {totals.prompts} prompts, {totals.rounds_run} rounds "
             f"({m['mean_rounds']:.2f} per prompt)"
             + (f"; resumed at prompt {totals.resumed_at}" if totals.resumed_at else "")
             + (f" ({totals.redone_rows} lines of an unfinished batch cut off and redone)" if totals.redone_rows else ""),
             f"  revision changed {100 * m['changed_share']:.1f}% of replies ({totals.changed} pairs)",
             f"  mean words: first reply {m['mean_words/first_reply']:.1f}, critique {m['mean_words/critique']:.1f}, "
             f"final revision {m['mean_words/final']:.1f}",
             f"  cut at the length limit: {100 * m['replies_cut_share']:.1f}% of first replies, "
             f"{100 * m['revisions_cut_share']:.1f}% of revisions"]
    notes = [(totals.empty_revisions, "empty revisions (the reply was kept)"),
             (totals.stopped_transcript, "rows stopped revising at max_transcript_tokens"),
             (totals.prompts_truncated, "prompts over max_prompt_tokens (their end kept)")]
    lines += [f"  {count} {what}" for count, what in notes if count]
    lines.append(f"  outputs: {out_dir}/sft.jsonl, pairs.jsonl, trace.jsonl, summary.json")
    return "\n".join(lines)
