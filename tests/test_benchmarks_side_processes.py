"""benchmarks/side_processes.py: each side of a side-by-side benchmark in its own process,
started with its own malloc settings, taking turns step by step."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import side_processes  # noqa: E402
from jaxalign import host_malloc  # noqa: E402


def test_trl_can_start_with_glibc_defaults_while_jaxalign_keeps_the_coordinators_settings(monkeypatch):
    for key, value in host_malloc.SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(host_malloc.SWITCH, "tuned")
    trl = side_processes.side_environment("trl", "glibc")
    assert not set(host_malloc.SETTINGS) & set(trl) and trl[host_malloc.SWITCH] == "off"
    # ... and the worker's own start (start_like_the_jaxalign_command) then leaves it alone.
    assert host_malloc.plan(trl, "glibc", [])[0] == {}
    for side, setting in (("jaxalign", "glibc"), ("jaxalign", "same"), ("trl", "same")):
        environ = side_processes.side_environment(side, setting)
        assert {key: environ[key] for key in host_malloc.SETTINGS} == host_malloc.SETTINGS
    with pytest.raises(ValueError, match="trl_malloc must be one of"):
        side_processes.side_environment("trl", "defaults")


@pytest.mark.slow
def test_builtin_dpo_runs_in_two_processes_with_each_sides_malloc(tmp_path):
    """A tiny DPO on the built-in data and tokenizer, TRL on glibc's defaults (~30 s)."""
    pytest.importorskip("trl", reason="TRL (the benchmark's peer) is not installed: pip install -e '.[test]'")
    from jaxalign.data import builtin, load_tokenizer

    tokenizer = load_tokenizer("builtin")
    common.build_llama(tmp_path / "policy", head="causal_lm", vocab_size=len(tokenizer), hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                       max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in builtin.rows("preferences")]
    spec = {"workload": "dpo", "tmp": str(tmp_path), "ckpt": str(tmp_path / "policy"), "pairs": 4, "max_length": 128,
            "lr": 1e-6, "warmup": 1, "steps": 2, "pack_length": None, "data": "builtin:preferences",
            "tokenizer": "builtin", "trl_rows": str(common.write_jsonl(tmp_path / "rows.jsonl", rows)),
            "trl_tokenizer": "builtin", "epoch_shapes": True}
    result = side_processes.run_in_side_processes(spec, trl_malloc="glibc")

    assert len(result["jaxalign"]) == len(result["trl_seconds"]) == len(result["trl_census"]) == 3
    # Step i is the same pairs on both sides: TRL's batch is their chosen and rejected rows.
    assert [r["pairs"] for r in result["jaxalign"]] == [4, 4, 4]
    assert [c["sequences"] for c in result["trl_census"]] == [8, 8, 8]
    assert result["trl_train_rows"] == len(rows)
    # Minor page faults per step on both sides; the first jaxalign step (compile, first run) touches new memory.
    assert len(result["trl_faults"]) == 3 and min(result["trl_faults"]) >= 0
    assert result["jaxalign"][0]["minor_faults"] > 0 and min(r["minor_faults"] for r in result["jaxalign"]) >= 0
    assert result["epoch"]["batches"] >= len(rows) // 4 and result["compiles"] >= 1
    # Each side started as asked: TRL with glibc's defaults; jaxalign like the jaxalign command.
    assert result["host_malloc"]["trl"].startswith("glibc's defaults (JAXALIGN_HOST_MALLOC=off)")
    added, why = host_malloc.plan(os.environ, host_malloc.c_library(), host_malloc.installed_accelerator_plugins())
    if added:
        assert result["host_malloc"]["jaxalign"].startswith("tuned for XLA:CPU (MALLOC_ARENA_MAX=1")
    else:
        assert result["host_malloc"]["jaxalign"] == why
    for side in ("jaxalign", "trl"):
        assert result["peak_rss_mb"][side] >= result["ready_rss_mb"][side] > 100
    json.dumps(result)  # the benchmark's JSON line carries it
