"""Synthetic run dirs for the dashboard tests, written the way a run writes them.

``metrics.jsonl`` lines as the ``jsonl`` sink writes them; ``events.jsonl``, completions files
and ``eval/NAME.json`` in the formats the dashboard reads (docs/dashboard.md). ``ReplayWriter``
appends steps from a thread while a test watches, like a run that is still training.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

SOURCES = ("lexicon", "format")


def ppo_metrics(step: int, kl_coef: float = 0.05) -> dict[str, Any]:
    """A PPO step's logged line: the proxy reward climbs, the gold reward peaks then falls."""
    kl = 0.02 * step / kl_coef**0.5
    proxy = 1 - math.exp(-step / 40)
    gold = proxy - 0.03 * kl**2
    return {
        "step": step, "time": round(1_700_000_000 + step * 2.0, 3),
        "train/objective/scores": proxy, "train/gold/reward": gold, "train/objective/kl": kl,
        "train/objective/kl_coef": kl_coef, "train/objective/entropy": 160 - step * 0.1,
        "train/policy/clipfrac_avg": 0.2, "train/loss/value_avg": 0.01, "train/reply_length": 24 - step * 0.02,
        "train/rewards/lexicon/mean": proxy * 0.7, "train/rewards/format/mean": proxy * 0.3,
        "train/loss": -0.1, "train/learning_rate": 1e-3, "train/grad_norm": 0.5 + 0.01 * step,
        "train/tokens_per_s": 1500.0, "train/time/rollout_s": 0.2,
    }


def completion_rows(step: int, count: int = 4) -> list[dict[str, Any]]:
    return [{
        "step": step, "prompt": f"Question {i}: how do I keep bees?",
        "completion": f"reply {i} at step {step}: " + ("great great great" if i == 0 else "use a hive"),
        "reward": 0.1 * i + 0.001 * step, "rewards": {"lexicon": 0.07 * i, "format": None if i == 3 else 0.03 * i},
        "advantage": 0.5 - 0.25 * i, "length": 8 + i, "truncated": i == 3, "gold_reward": 0.05 * i,
    } for i in range(count)]


def write_completions(run_dir: Path, step: int, rows: list[dict[str, Any]]) -> Path:
    """Written whole then renamed, as a run does: a reader never sees half a file."""
    folder = run_dir / "completions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.jsonl"
    temporary = folder / f".{path.name}.tmp"
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(temporary, path)
    return path


def append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a") as out:
        out.write("".join(json.dumps(r) + "\n" for r in records))


def write_run(run_dir: Path, steps: range, *, algo: str = "ppo", kl_coef: float = 0.05,
              completions_every: int = 10, checkpoint_every: int = 20) -> Path:
    """A finished-looking RL run with every file the dashboard reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"algo: {algo}\nrun_dir: {run_dir}\nmax_steps: {steps.stop - 1}\n")
    append_lines(run_dir / "events.jsonl", [{"time": 1.7e9, "step": 0, "kind": "start"}])
    for step in steps:
        append_step(run_dir, step, kl_coef=kl_coef, completions_every=completions_every,
                    checkpoint_every=checkpoint_every)
    return run_dir


def append_step(run_dir: Path, step: int, *, kl_coef: float = 0.05, completions_every: int = 10,
                checkpoint_every: int = 20) -> None:
    append_lines(run_dir / "metrics.jsonl", [ppo_metrics(step, kl_coef)])
    if step % completions_every == 0:
        write_completions(run_dir, step, completion_rows(step))
    if step % checkpoint_every == 0:
        append_lines(run_dir / "events.jsonl", [{"time": time.time(), "step": step, "kind": "checkpoint"}])


def write_reward_model_eval(run_dir: Path, name: str = "hh_test") -> Path:
    folder = run_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "kind": "reward_model", "step": 40, "metrics": {"accuracy": 0.71, "ece": 0.04, "margin": 0.9},
        "reliability": {"bin_lower": [0.0, 0.5], "bin_upper": [0.5, 1.0], "predicted": [0.3, 0.75],
                        "observed": [0.35, 0.7], "count": [40, 60]},
        "chosen_rewards": [0.5, 1.0, 1.5, 0.2, 0.9], "rejected_rewards": [-0.5, 0.1, 0.3, -1.0, 0.0],
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result))
    return path


class ReplayWriter:
    """Appends one step every ``interval_s`` from a thread until ``stop()`` (or ``last_step``)."""

    def __init__(self, run_dir: Path, first_step: int, last_step: int, interval_s: float = 0.2) -> None:
        self.run_dir, self.step, self.last_step, self.interval_s = run_dir, first_step, last_step, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.step <= self.last_step and not self._stop.wait(self.interval_s):
            append_step(self.run_dir, self.step)
            self.step += 1

    def __enter__(self) -> "ReplayWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
