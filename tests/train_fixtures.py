"""Tiny run configs and subprocess launchers shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def tiny_run_config(run_dir: Path, algo: str = "rm", **sections) -> dict:
    """A small, fast run on the built-in data; ``sections`` replace top-level keys."""
    config = {
        "algo": algo,
        "run_dir": str(run_dir),
        "max_steps": 12,
        "model": {"tokenizer": "builtin", "config": dict(TINY_LLAMA)},
        "data": {
            "train": "builtin:preferences",
            "eval": "builtin:preferences#eval",
            "batch_size": 8,
            "max_length": 96,
            "pad_to_multiple": 32,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "checkpoint": {"every_steps": 2, "keep": 0, "every_minutes": 0},
        "log": {"every_steps": 1, "tensorboard": True},
        "eval_batches": 2,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def single_device_env() -> dict[str, str]:
    """Environment for a CLI subprocess on one CPU device."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxalign.cli", *args],
        env=single_device_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxalign.cli", *args],
        env=single_device_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finished_checkpoints(run_dir: Path) -> list[int]:
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = finished_checkpoints(run_dir)
        if steps:
            return steps[-1]
        if process.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint:\n{process.stdout.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def read_metrics(run_dir: Path, prefix: str = "train/") -> dict[int, dict[str, float]]:
    """Last logged train metrics per step from metrics.jsonl."""
    import json

    by_step: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {k: v for k, v in record.items() if k.startswith(prefix)}
        if values:
            by_step[record["step"]] = values
    return by_step


def kill_and_resume(reference_cfg: Path, resumed_cfg: Path, resumed_dir: Path, max_steps: int) -> int:
    """Runs ``reference_cfg`` through; starts ``resumed_cfg``, SIGKILLs it after its first checkpoint
    and reruns it to the end. Returns the step the killed run had saved."""
    import signal

    assert run_cli("train", str(reference_cfg)).returncode == 0
    victim = start_cli("train", str(resumed_cfg))
    killed_after = wait_for_checkpoint(victim, resumed_dir)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert killed_after < max_steps
    finished = run_cli("train", str(resumed_cfg))
    assert finished.returncode == 0, finished.stderr
    assert "resumed from checkpoint" in finished.stderr
    return killed_after


def resume_from_copy(straight, make_config, run_dir: Path, resumed_dir: Path, step: int, files: tuple[str, ...] = ()):
    """Copies checkpoint ``step`` of ``run_dir`` (and ``files`` beside it) into ``resumed_dir``, trains a
    ``Trainer(make_config(resumed_dir))`` from there, asserts its final parameters equal ``straight``'s
    (a finished ``Trainer``) exactly and returns both runs' train metrics ``(straight, resumed)``."""
    import shutil

    import jax
    import numpy as np

    from jaxalign.trainer import Trainer

    shutil.copytree(run_dir / "checkpoints" / str(step), resumed_dir / "checkpoints" / str(step))
    for name in files:
        shutil.copy(run_dir / name, resumed_dir)
    resumed = Trainer(make_config(resumed_dir))
    resumed.run()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.state.params),
                 jax.device_get(resumed.state.params))
    return read_metrics(run_dir), read_metrics(resumed_dir)


def assert_adapter_run_resumes_exactly(make_config, tmp_path: Path, names: tuple[str, ...]) -> dict:
    """A 4-step LoRA run checkpointed at step 2: its checkpoints hold adapters (no base weights),
    steps 3-4 after resuming from step 2 repeat the straight run exactly in ``names`` (and the final
    parameters), and the export is a PEFT adapter folder. Returns the straight run's train metrics."""
    import json

    from jaxalign.trainer import Trainer

    straight = Trainer(make_config(tmp_path / "run"))
    straight.run()
    metadata = json.dumps(json.loads((tmp_path / "run" / "checkpoints" / "2" / "state" / "_METADATA").read_text()))
    assert "lora_a" in metadata and "lora_b" in metadata and "embedding" not in metadata
    first, again = resume_from_copy(straight, make_config, tmp_path / "run", tmp_path / "resumed", 2)
    for step in (3, 4):
        for name in names:
            assert again[step][name] == first[step][name], (step, name)
    export = tmp_path / "run" / "export"
    assert json.loads((export / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not (export / "config.json").exists()
    return first
