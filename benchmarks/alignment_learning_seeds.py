"""Measures the margin tests/test_alignment_learning.py asserts: the reduced SFT -> DPO pipeline's
greedy decline rate on held-out harmful prompts before and after DPO, for each seed given.

    PYTHONPATH=. python benchmarks/alignment_learning_seeds.py --out /tmp/learning 0 1 2

Prints one line per seed (SFT decline, DPO decline, rise, wall and CPU seconds). Set the test's
MIN_RISE below the smallest rise and MAX_SFT_DECLINE above the largest SFT decline.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.test_alignment_learning import decline_rates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--out", default="runs/alignment_learning_seeds", help="one folder per seed under it")
    args = parser.parse_args()
    for seed in args.seeds:
        folder = pathlib.Path(args.out) / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        started, usage = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        before, after = decline_rates(folder, seed)
        cpu = sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f) - getattr(usage, f) for f in ("ru_utime", "ru_stime"))
        print(f"seed {seed}: sft decline {before:.3f} dpo decline {after:.3f} rise {after - before:.3f} "
              f"wall {time.time() - started:.0f} s cpu {cpu:.0f} s", flush=True)


if __name__ == "__main__":
    main()
