"""Evaluation during training: a run config's eval section runs every N steps and at the end,
so metrics.jsonl holds a curve, and eval/NAME.json the final result; no scratch model is left."""

from __future__ import annotations

import json

import pytest

from jaxalign.config import load_config
from jaxalign.configlib import ConfigError
from jaxalign.trainer import train
from tests.train_fixtures import tiny_run_config, write_config


@pytest.mark.slow  # ~40 s: a 4-step SFT run with three generation evals
def test_sft_run_evaluates_every_n_steps_and_at_the_end(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_run_config(run_dir, "sft", max_steps=4, data={"train": "builtin:sft", "eval": "builtin:sft#eval"},
                             eval={"name": "gen", "every_steps": 2, "prompts": "builtin:prompts#eval",
                                   "max_prompts": 3, "num_generations": 2, "max_new_tokens": 4, "reference": "none",
                                   "rewards": ["jaxalign.rewards_builtin:helpful_harmless"]})
    config["log"]["tensorboard"] = False
    train(load_config(write_config(tmp_path / "sft.yaml", config)))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "eval/gen/reward" in line]
    assert steps == [2, 4]
    result = json.loads((run_dir / "eval" / "gen.json").read_text())
    assert result["step"] == 4 and result["target"] == str(run_dir / "export") and result["metrics"]["replies"] == 6
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == ["gen.json"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("name") == "gen"] == [2, 4]


def test_eval_section_is_validated_when_the_config_loads(tmp_path):
    config = tiny_run_config(tmp_path / "run", "sft", eval={"every_steps": 2, "num_generation": 3})
    with pytest.raises(ConfigError, match="num_generation"):
        load_config(write_config(tmp_path / "bad.yaml", config))
