"""The critique -> revision loop: first replies, N rounds per prompt, rows out as it goes.

Per batch of ``batch_size`` prompts: sample the first replies; then each round picks a
principle per row, samples critiques of every still-active row in one sampler call and
the revisions in another, both continuing the few-shot block prefilled once. Finished
batches go to ``sft.jsonl`` / ``pairs.jsonl`` / ``trace.jsonl`` through
``ResumableOutputs``; a batch samples with ``fold_in(key(seed), its first prompt's index)`` so a resumed run
makes the rows an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import sys
import time
from typing import Any, TextIO

import jax

from jaxalign.constitutional.config import ConstitutionalConfig
from jaxalign.constitutional.constitution import Constitution, Principle, load_constitution
from jaxalign.constitutional.outputs import ResumableOutputs, file_digest, model_identity, text_digest
from jaxalign.constitutional.sampling import Sample, TextSampler
from jaxalign.constitutional.summary import Totals, format_summary
from jaxalign.constitutional.transcript import (Round, critique_prompt, few_shot_prefix, revision_block,
                                                revision_prompt)
from jaxalign.data.chat import ChatRenderer
from jaxalign.data.errors import Counter
from jaxalign.data.formats import detect_format, format_rows
from jaxalign.data.sources import read_rows
from jaxalign.data.tokenize import load_tokenizer
from jaxalign.metrics_log import ProgressBar

FILES = ("sft.jsonl", "pairs.jsonl", "trace.jsonl")
ROW_KEYS = ("prompt", "completion", "chosen", "rejected", "messages")  # replaced by ours in the outputs


@dataclasses.dataclass(frozen=True)
class PromptRow:
    index: int
    prompt: str  # as the policy sees it (chat rows rendered by the tokenizer's template)
    columns: dict[str, Any]  # the row's other columns, carried into every output row


def read_prompt_rows(spec: str, tokenizer: Any) -> list[PromptRow]:
    """Every row's prompt text and other columns; an empty set is an error."""
    rows = read_rows(spec)
    if not rows:
        raise ValueError(f"prompts: {spec} holds no prompts")
    renderer = functools.cache(lambda: ChatRenderer(tokenizer))
    examples = format_rows(rows, detect_format(rows), "prompt", renderer, "raise", Counter())
    if not examples:
        raise ValueError(f"prompts: {spec} holds no prompts")
    prompts = []
    for index, (row, example) in enumerate(zip(rows, examples)):
        columns = {k: v for k, v in row.value.items() if k not in ROW_KEYS} if isinstance(row.value, dict) else {}
        prompts.append(PromptRow(index, example.prompt, columns))
    return prompts


def pick_principle(constitution: Constitution, order: str, seed: int, index: int, round_: int) -> Principle:
    """``random``: seeded by (seed, prompt index, round), the same on every run; ``cycle``: (index + round) mod P."""
    principles = constitution.principles
    if order == "cycle":
        return principles[(index + round_) % len(principles)]
    return random.Random(f"{seed}/{index}/{round_}").choice(principles)


class ConstitutionalRun:
    """One configured run over loaded pieces (the Python API; ``run_constitutional`` loads them)."""

    def __init__(self, cfg: ConstitutionalConfig, constitution: Constitution, sampler: TextSampler,
                 prompts: list[PromptRow]):
        self.cfg, self.constitution, self.sampler, self.prompts = cfg, constitution, sampler, prompts
        prefix = few_shot_prefix(constitution) if cfg.few_shot else ""
        self.prefix_ids = sampler.encode(prefix, first=True) if prefix else None
        self.prefix_tokens = len(self.prefix_ids or ())
        room = cfg.max_transcript_tokens - self.prefix_tokens - cfg.max_critique_tokens - cfg.max_revision_tokens
        if room < 1:
            raise ValueError(
                f"max_transcript_tokens {cfg.max_transcript_tokens} leaves no room for a transcript: the constitution's "
                f"few-shot examples take {self.prefix_tokens} tokens and a critique and revision "
                f"{cfg.max_critique_tokens + cfg.max_revision_tokens}; raise it or shorten the examples")

    def run_batch(self, batch: list[PromptRow], first_index: int, totals: Totals) -> dict[str, list[dict]]:
        """All rounds for a batch of prompts (the first is prompt ``first_index``): the rows of each output file."""
        cfg, sampler = self.cfg, self.sampler
        rng = jax.random.fold_in(jax.random.key(cfg.seed), first_index)
        prompt_ids = []
        for row in batch:
            ids = sampler.encode(row.prompt, first=True)
            totals.prompts_truncated += len(ids) > cfg.max_prompt_tokens
            prompt_ids.append(ids[-cfg.max_prompt_tokens:])
        first = sampler.sample(prompt_ids, cfg.max_reply_tokens, jax.random.fold_in(rng, 0))
        rounds: list[list[Round]] = [[] for _ in batch]
        finishes: list[list[dict]] = [[] for _ in batch]
        stopped: list[str | None] = [None] * len(batch)
        for round_ in range(cfg.rounds):
            active, texts, principles = [], [], []
            for i, row in enumerate(batch):
                if stopped[i]:
                    continue
                principle = pick_principle(self.constitution, cfg.principle_order, cfg.seed, row.index, round_)
                ids = sampler.encode(critique_prompt(row.prompt, first[i].text, rounds[i], principle,
                                                     self.constitution), first=self.prefix_ids is None)
                # the revision's input: this prompt + the critique + the revision request, then the revision
                needed = (self.prefix_tokens + len(ids) + cfg.max_critique_tokens
                          + len(sampler.encode(revision_block(principle), first=False)) + cfg.max_revision_tokens)
                if needed > cfg.max_transcript_tokens:
                    stopped[i] = "max_transcript_tokens"
                    continue
                active.append(i), texts.append(ids), principles.append(principle)
            if not active:
                break
            critiques = sampler.sample(texts, cfg.max_critique_tokens, jax.random.fold_in(rng, 1 + 2 * round_),
                                       self.prefix_ids)
            revision_ids = [sampler.encode(revision_prompt(batch[i].prompt, first[i].text, rounds[i], principle,
                                                           critique.text, self.constitution),
                                           first=self.prefix_ids is None)
                            for i, principle, critique in zip(active, principles, critiques)]
            revisions = sampler.sample(revision_ids, cfg.max_revision_tokens, jax.random.fold_in(rng, 2 + 2 * round_),
                                       self.prefix_ids)
            for i, principle, critique, revision in zip(active, principles, critiques, revisions):
                previous = rounds[i][-1].revision if rounds[i] else first[i].text
                empty = not revision.text.strip()
                totals.empty_revisions += empty
                rounds[i].append(Round(principle.name, critique.text, previous if empty else revision.text))
                finishes[i].append({"critique_finish": critique.finish_reason,
                                    "revision_finish": "empty" if empty else revision.finish_reason})
                totals.add_round(critique, revision)
        return self._rows(batch, first, rounds, finishes, stopped, totals)

    def _rows(self, batch: list[PromptRow], first: list[Sample], rounds: list[list[Round]],
              finishes: list[list[dict]], stopped: list[str | None], totals: Totals) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {name: [] for name in FILES}
        for row, reply, row_rounds, row_finishes, stop in zip(batch, first, rounds, finishes, stopped):
            final = row_rounds[-1].revision if row_rounds else reply.text
            changed = final.strip() != reply.text.strip()
            totals.add_row(reply, final, changed, stop)
            out["sft.jsonl"].append({"prompt": row.prompt, "completion": final, **row.columns})
            if changed:  # a pair of two equal replies teaches nothing
                out["pairs.jsonl"].append({"prompt": row.prompt, "chosen": final, "rejected": reply.text, **row.columns})
            out["trace.jsonl"].append({
                "index": row.index, "prompt": row.prompt, "first_reply": reply.text, "first_finish": reply.finish_reason,
                "rounds": [{"round": r, "principle": step.principle, "critique": step.critique,
                            "revision": step.revision, **finish}
                           for r, (step, finish) in enumerate(zip(row_rounds, row_finishes))],
                "final": final, "changed": changed, "stopped": stop, **row.columns,
            })
        return out

    def run(self, out_dir: str, fingerprint: dict, progress: TextIO | None = None) -> Totals:
        cfg = self.cfg
        outputs = ResumableOutputs(out_dir, FILES, fingerprint)
        todo = self.prompts[:cfg.max_prompts] if cfg.max_prompts else self.prompts
        totals = Totals.from_dict(outputs.totals)
        totals.resumed_at, totals.redone_rows = outputs.prompts_done, outputs.dropped_rows
        bar = ProgressBar(len(todo), outputs.prompts_done, stream=progress if progress is not None else sys.stderr,
                          unit="rows", rate_unit="rows")
        started, made = time.monotonic(), 0
        start = outputs.prompts_done
        while start < len(todo):
            # Batches keep to the grid of batch_size (a run extended by a larger max_prompts first
            # finishes its short last batch); each is seeded by its first prompt's index.
            end = min((start // cfg.batch_size + 1) * cfg.batch_size, len(todo))
            rows = self.run_batch(todo[start:end], start, totals)
            outputs.commit(rows, end, totals.to_dict())
            made += end - start
            start = end
            bar.update(end, tokens_per_s=made / max(time.monotonic() - started, 1e-9))
        bar.close()
        return totals


def run_constitutional(cfg: ConstitutionalConfig, progress: TextIO | None = None) -> Totals:
    """Loads the policy, prompts and constitution of ``cfg`` and runs (or resumes) the loop."""
    from jaxalign.models import load_pretrained
    from jaxalign.sharding import MeshConfig, batch_divisor, make_mesh

    constitution = load_constitution(cfg.constitution)
    tokenizer = load_tokenizer(cfg.model)
    prompts = read_prompt_rows(cfg.prompts, tokenizer)
    mesh = make_mesh(MeshConfig(data=-1))
    model = load_pretrained(cfg.model, dtype=cfg.dtype, head="causal_lm", mesh=mesh)
    rows = -(-cfg.batch_size // batch_divisor(mesh)) * batch_divisor(mesh)
    sampler = TextSampler(model, tokenizer, rows=rows, mesh=mesh, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, stop_tokens=cfg.stop_tokens, stop_strings=cfg.stop_strings)
    fingerprint = {
        "settings": json.loads(json.dumps(cfg.output_settings())),
        "constitution": file_digest(constitution.source),
        "model": model_identity(cfg.model),
        "prompts": text_digest([p.prompt for p in prompts]),
    }
    totals = ConstitutionalRun(cfg, constitution, sampler, prompts).run(cfg.out_dir, fingerprint, progress)
    totals.write(cfg.out_dir)
    return totals


__all__ = ["ConstitutionalRun", "FILES", "format_summary", "pick_principle", "read_prompt_rows", "run_constitutional"]
