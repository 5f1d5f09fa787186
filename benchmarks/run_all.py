"""Runs the jaxalign-vs-TRL training benchmarks one after another and prints a summary.

Each benchmark runs in its own process (so jax and torch start fresh each
time) and ends with a ``BENCHMARK_JSON {...}`` line; this runner collects those
lines, prints one table, and with ``--out FILE`` writes them as JSON lines.

Usage::

    python benchmarks/run_all.py [--only rm dpo_hh dpo_builtin] [--out results.jsonl] [--trl-malloc same|glibc]

Needs the ``bench`` extra (``pip install -e ".[bench]"``) and, for the HH-RLHF
workloads, ``tests/data/real`` (they print SKIP without it). Expect 5 minutes on
a quiet 2-core CPU, up to 20 when other work shares it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from side_processes import add_trl_malloc_option  # noqa: E402  (light: no jax or torch at import)

BENCHMARKS = {
    "rm": ["rm_vs_trl.py"],
    "dpo_hh": ["dpo_vs_trl.py", "--workload", "hh"],
    "dpo_builtin": ["dpo_vs_trl.py", "--workload", "builtin"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, help="write the collected JSON results here (one line each)")
    add_trl_malloc_option(parser)  # passed on to each benchmark
    args = parser.parse_args()

    results = []
    for name in args.only:
        command = [sys.executable, str(HERE / BENCHMARKS[name][0]), *BENCHMARKS[name][1:],
                   "--trl-malloc", args.trl_malloc]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        lines = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line)
        found = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("BENCHMARK_JSON ")]
        if process.returncode != 0:
            print(f"=== {name} failed (exit {process.returncode})")
        elif not found:
            print(f"=== {name} skipped")
        else:
            results.append({**found[-1], "runner_wall_seconds": time.perf_counter() - start})

    if not results:
        return
    print("\nsummary (s/step and pairs/s over the timed steps; ratio = TRL s / jaxalign s; steady = the ratio "
          "over steps that met no new batch shape)")
    header = f"{'benchmark':20s} {'jaxalign s/step':>16s} {'TRL s/step':>11s} {'ratio':>6s} {'steady':>7s} " \
             f"{'jaxalign pairs/s':>17s} {'TRL pairs/s':>12s} {'useful FLOP share':>18s}"
    print(header)
    for r in results:
        print(f"{r['benchmark']:20s} {r['jaxalign_s_per_step']:16.3f} {r['trl_s_per_step']:11.3f} "
              f"{r['speedup']:6.2f} {r['speedup_steady']:7.2f} {r['jaxalign_pairs_per_s']:17.3f} {r['trl_pairs_per_s']:12.3f} "
              f"{r['jaxalign_useful_share_of_matmul_rate']:18.3f}")
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
