"""``jaxalign constitutional`` killed with SIGKILL mid-run and resumed: the same files as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxalign.data import load_tokenizer
from jaxalign.models import ModelConfig, init_model, save_pretrained
from train_fixtures import single_device_env

pytestmark = pytest.mark.slow
FILES = ("sft.jsonl", "pairs.jsonl", "trace.jsonl")


def tiny_policy(folder):
    tokenizer = load_tokenizer("builtin:alignment")
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=1024, initializer_range=0.1, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    save_pretrained(init_model(cfg, seed=0), folder)
    tokenizer.save_pretrained(folder)


def config(tmp_path, out):
    path = tmp_path / f"{out}.yaml"
    path.write_text(json.dumps({
        "model": str(tmp_path / "model"), "prompts": "builtin:alignment_prompts#eval", "out_dir": str(tmp_path / out),
        "max_prompts": 24, "batch_size": 2, "rounds": 1, "max_reply_tokens": 8, "max_critique_tokens": 6,
        "max_revision_tokens": 8, "temperature": 1.0, "seed": 7}))
    return str(path)



def test_sigkill_then_resume_gives_the_uninterrupted_files(tmp_path):
    tiny_policy(tmp_path / "model")
    env = single_device_env()
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "xla-cache")  # the three runs compile once
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    run = lambda name: [sys.executable, "-m", "jaxalign.cli", "constitutional", config(tmp_path, name)]  # noqa: E731

    whole = subprocess.run(run("whole"), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    process = subprocess.Popen(run("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed" / "progress.json"
    deadline, done = time.monotonic() + 300, 0
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists():
            done = json.loads(progress.read_text())["prompts_done"]
            if done >= 2:
                break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= done < 24, f"the run was not killed mid-way (prompts done: {done})"

    resumed = subprocess.run(run("killed"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at prompt" in resumed.stderr
    for name in FILES:
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    trace = [json.loads(line) for line in (tmp_path / "killed" / "trace.jsonl").read_text().splitlines()]
    assert [row["index"] for row in trace] == list(range(24))

    changed = config(tmp_path, "killed").replace(".yaml", "-t.yaml")
    with open(changed, "w") as handle:
        handle.write(open(config(tmp_path, "killed")).read().replace('"temperature": 1.0', '"temperature": 0.5'))
    refused = subprocess.run([sys.executable, "-m", "jaxalign.cli", "constitutional", changed], env=env,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "refusing to mix them. Changed: settings.temperature (1.0 -> 0.5)" in refused.stderr
