"""float32 matmul GFLOP/s under each XLA:CPU setting, against torch, on this machine.

Each setting runs in a fresh process (XLA_FLAGS is read once, at jax's first
use). Rounds alternate the settings (A B C ... A B C ...) so that load on a
shared machine falls on all of them alike; the table gives each setting's
median and best over rounds, the load average at the start and end, whether
the compiled dot shows the library the flag asks for, and the largest
relative difference from the default's product (numerics).

Shapes: square n x n, and the projections of the benchmarks' DPO model
([rows * seq, hidden] x [hidden, intermediate]).

Usage::

    python benchmarks/cpu_matmul_flags.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# jax 0.10.2's XLA:CPU rewrites dots into YNNPACK fusions by default ("__ynn_fusion" in the
# compiled HLO); an empty ynn fusion list turns that off and leaves XLA's own dot (Eigen).
# The oneDNN and XNNPACK switches below leave the compiled dot unchanged in the pip wheel
# (checked in the HLO: the "library" column), so they are measured once, to show it.
SETTINGS = {
    "default": "",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "one_thread": "--xla_cpu_multi_thread_eigen=false",
    "eigen_one_thread": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "eigen_onednn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot",
}
SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 512, 1376), (4096, 1376, 512)]

PROBE = r"""
import json, sys, time
import numpy as np
kind = sys.argv[1]
shapes = json.loads(sys.argv[2])
out = {}
def best(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)
for m, k, n in shapes:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(m, k)).astype(np.float32); b = rng.normal(size=(k, n)).astype(np.float32)
    if kind == "torch":
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        seconds = best(lambda: ta @ tb)
        product = (ta @ tb).numpy()
        library = "torch"
    else:
        import jax, jax.numpy as jnp
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        dot = jax.jit(jnp.dot)
        seconds = best(lambda: dot(ja, jb).block_until_ready())
        product = np.asarray(dot(ja, jb))
        sys.path.insert(0, sys.argv[3])
        import common
        library = common.dot_library()
    reference = a.astype(np.float64) @ b.astype(np.float64)
    out[f"{m}x{k}x{n}"] = dict(
        gflops=2.0 * m * k * n / seconds / 1e9,
        rel_err=float(np.abs(product - reference).max() / np.abs(reference).max()),
        library=library)
print("PROBE_JSON " + json.dumps(out))
"""


def run_probe(kind: str, flags: str) -> dict | None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    shapes = json.dumps(SHAPES)
    here = str(Path(__file__).resolve().parent)
    result = subprocess.run([sys.executable, "-c", PROBE, kind, shapes, here], env=env, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("PROBE_JSON "):
            return json.loads(line[len("PROBE_JSON "):])
    print(f"  {kind} {flags!r} failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:200]}", flush=True)
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    args = parser.parse_args()
    import common

    print(f"cpu: {common.cpu_model()}, cores {os.cpu_count()}, load average at start {os.getloadavg()}")
    runs: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for name in ["torch", *args.settings]:
            probe = run_probe("torch" if name == "torch" else "jax", SETTINGS.get(name, ""))
            if probe is not None:
                runs.setdefault(name, []).append(probe)
                print(f"  round {round_index} {name}: " + ", ".join(
                    f"{shape} {value['gflops']:.0f}" for shape, value in probe.items()), flush=True)
    print(f"load average at end {os.getloadavg()}")
    rows = []
    for name, probes in runs.items():
        for shape in probes[0]:
            values = [probe[shape]["gflops"] for probe in probes]
            last = probes[-1][shape]
            rows.append([name, shape, statistics.median(values), max(values), last["library"], last["rel_err"]])
    common.print_table(f"float32 matmul GFLOP/s ({args.rounds} alternating rounds)",
                       ["setting", "m x k x n", "median", "best", "dot runs on", "max rel err"], rows)
    common.emit_json("cpu_matmul_flags", {"cpu": common.cpu_model(), "rows": rows})


if __name__ == "__main__":
    main()
