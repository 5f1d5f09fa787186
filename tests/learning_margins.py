"""Measure a learning test's numbers over seeds and CPU code paths, to choose margins that
hold on any machine.

An RL or pipeline run of a few dozen steps is chaotic: another CPU (vector width, XLA's
code generation, the device count) changes rounding and with it the trajectory. A
learning test therefore asserts margins measured here, over several seeds and under XLA
flags that perturb the CPU code path the way a different machine would, never the path
one machine happened to take.

A learning test exposes a ``LearningCase``: a config builder ``(run_dir, seed) -> dict``
and a summary ``(run_dir) -> {name: float}`` of the quantities its asserts read. Then::

    python -m tests.learning_margins tests.test_ppo:PPO_LEARNING --seeds 0 1 2 \
        --perturbations default one_device fast_math vector128

runs every (seed, perturbation) in its own process and prints each summary and the
min/max of every quantity. Put the table in the test's comment.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent

# XLA_FLAGS that change the CPU code path (and so the rounding) like another machine would.
PERTURBATIONS = {
    "default": "--xla_force_host_platform_device_count=8",
    "one_device": "--xla_force_host_platform_device_count=1",
    "fast_math": "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=true",
    "vector128": "--xla_force_host_platform_device_count=8 --xla_cpu_prefer_vector_width=128",
}


@dataclasses.dataclass(frozen=True)
class LearningCase:
    """A learning test's run (``config(run_dir, seed)``, a config dict for ``TrainConfig``)
    and the numbers its asserts read (``summary(run_dir)``)."""

    config: Callable[[Path, int], dict]
    summary: Callable[[Path], dict[str, float]]


def _run_one(case_spec: str, seed: int, run_dir: Path) -> dict[str, float]:
    """In this process: train the case for ``seed`` and summarise it."""
    from jaxalign.config import TrainConfig
    from jaxalign.configlib import from_dict
    from jaxalign.trainer import train

    case = _load(case_spec)
    train(from_dict(TrainConfig, case.config(run_dir, seed)))
    return case.summary(run_dir)


def _load(case_spec: str) -> LearningCase:
    module_name, _, attribute = case_spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def measure(case_spec: str, seeds: list[int], perturbations: list[str]) -> list[dict]:
    """One subprocess per (perturbation, seed); returns their summaries."""
    results = []
    for perturbation in perturbations:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                flags = f"{PERTURBATIONS[perturbation]} --xla_cpu_collective_call_terminate_timeout_seconds=900"
                env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
                       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
                started = time.monotonic()
                out = subprocess.run(
                    [sys.executable, "-m", "tests.learning_margins", "--one", case_spec, "--seed", str(seed),
                     "--run-dir", str(Path(tmp) / "run")],
                    cwd=REPO, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{perturbation} seed {seed} failed:\n{out.stderr[-3000:]}")
                summary = json.loads(out.stdout.strip().splitlines()[-1])
            summary = {"perturbation": perturbation, "seed": seed, "seconds": round(time.monotonic() - started), **summary}
            print(json.dumps(summary), flush=True)
            results.append(summary)
    return results


def print_ranges(results: list[dict]) -> None:
    names = [name for name in results[0] if name not in ("perturbation", "seed", "seconds")]
    print(f"{'quantity':40s} {'min':>10s} {'max':>10s}")
    for name in names:
        values = [r[name] for r in results]
        print(f"{name:40s} {min(values):10.4g} {max(values):10.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", nargs="?", help="module:ATTRIBUTE naming a LearningCase")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--perturbations", nargs="+", choices=sorted(PERTURBATIONS), default=list(PERTURBATIONS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run_one(args.one, args.seed, args.run_dir)))
        return
    if not args.case:
        parser.error("name a case, e.g. tests.test_ppo:PPO_LEARNING")
    print_ranges(measure(args.case, args.seeds, args.perturbations))


if __name__ == "__main__":
    main()
