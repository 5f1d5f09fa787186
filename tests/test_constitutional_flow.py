"""The Constitutional AI flow in miniature on the built-in task, every stage chained by its outputs:
SFT -> constitutional data -> SFT on the revisions -> AI labels -> reward model on soft labels -> PPO."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from jaxalign.config import TrainConfig
from jaxalign.configlib import from_dict
from jaxalign.constitutional import ConstitutionalConfig, run_constitutional
from jaxalign.constitutional.label import label_file
from jaxalign.data import builtin
from jaxalign.generation.jsonl import generate_jsonl
from jaxalign.tasks.alignment import task_metrics
from jaxalign.trainer import train

pytestmark = pytest.mark.slow
MODEL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
         "tie_word_embeddings": True}
COMMON = {"checkpoint": {"every_steps": 1000, "keep": 1, "every_minutes": 0}, "log": {"every_steps": 50}}
PROMPTS = 16


def _train(run_dir, algo, model, data, steps, **extra) -> str:
    cfg = {"algo": algo, "run_dir": str(run_dir), "seed": 0, "max_steps": steps, "model": model,
           "data": {"max_length": 128, "batch_size": 8, **data}, "optim": {"lr": 1e-3}, **COMMON, **extra}
    train(from_dict(TrainConfig, cfg))
    return str(run_dir / "export")


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_constitutional_flow_end_to_end(tmp_path):
    sft = _train(tmp_path / "sft", "sft", {"tokenizer": "builtin:alignment", "config": MODEL},
                 {"train": "builtin:alignment_sft", "pack_length": 256}, steps=20)

    cai = ConstitutionalConfig(model=sft, prompts="builtin:alignment_prompts#train", out_dir=str(tmp_path / "cai"),
                               max_prompts=PROMPTS, batch_size=8, rounds=2, max_reply_tokens=16,
                               max_critique_tokens=12, max_revision_tokens=16, temperature=1.0)
    totals = run_constitutional(cai, progress=io.StringIO())
    sft_rows, pairs = _rows(tmp_path / "cai" / "sft.jsonl"), _rows(tmp_path / "cai" / "pairs.jsonl")
    trace = _rows(tmp_path / "cai" / "trace.jsonl")
    assert len(sft_rows) == len(trace) == PROMPTS and len(pairs) == totals.changed >= PROMPTS // 2
    assert [r["index"] for r in trace] == list(range(PROMPTS))
    assert all(len(r["rounds"]) == 2 or r["stopped"] for r in trace)
    source = builtin.rows("alignment_prompts", "train")[:PROMPTS]
    assert [r["prompt"] for r in sft_rows] == [r["prompt"] for r in source]
    assert [r["category"] for r in sft_rows] == [r["category"] for r in source]  # columns carried

    revised = _train(tmp_path / "cai-sft", "sft", {"path": sft}, {"train": str(tmp_path / "cai" / "sft.jsonl")},
                     steps=3)
    labelled = tmp_path / "cai" / "pairs_labelled.jsonl"
    result = label_file(str(tmp_path / "cai" / "pairs.jsonl"), sft, str(labelled), principle="harm", batch_size=8)
    strengths = np.array([r["preference_strength"] for r in _rows(labelled)])
    assert len(strengths) == len(pairs) and np.all((strengths >= 0) & (strengths <= 1))
    assert np.ptp(strengths) > 0 and result.metrics()["pairs"] == len(pairs)

    rm = _train(tmp_path / "rm-ai", "rm", {"path": sft},
                {"train": str(labelled), "strength_column": "preference_strength"}, steps=3,
                loss={"name": "bradley_terry"}, log={"every_steps": 1})
    metrics = [json.loads(line) for line in open(tmp_path / "rm-ai" / "metrics.jsonl")]
    assert any(np.isfinite(m.get("train/loss", np.nan)) for m in metrics)

    ppo = _train(tmp_path / "ppo-ai", "ppo", {"path": revised},
                 {"train": "builtin:alignment_prompts", "max_length": 96, "max_prompt_length": 64,
                  "pad_to_multiple": 16}, steps=2,
                 ppo={"reward_model": rm, "max_new_tokens": 16, "num_mini_batches": 1})
    rows = builtin.rows("alignment_prompts", "eval")[:16]
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    out = io.StringIO()
    generate_jsonl(ppo, str(prompts), out, max_new_tokens=16, temperature=0.0, batch_size=16, progress=io.StringIO())
    replies = [json.loads(line)["completion"] for line in out.getvalue().splitlines()]
    metrics = task_metrics(rows, replies)
    assert 0.0 <= metrics["decline_rate"] <= 1.0 and 0.0 <= metrics["help_rate"] <= 1.0
