"""Benchmark: loading a Hugging Face Llama checkpoint and running a forward pass, jaxalign vs transformers.

Builds a random float32 Llama checkpoint (~500 MB by default) in a temp dir,
then, each in a fresh subprocess so no measurement sees another's memory:

  - jaxalign: peak host RSS while ``load_pretrained`` runs, above the
    process's RSS after imports and backend start-up, as a ratio to the
    checkpoint size (target < 1.5x); load time; forward tokens/s (jitted,
    compile time reported apart).
  - transformers (torch): the same, with ``AutoModelForCausalLM.from_pretrained``.

Usage::

    python benchmarks/model_load_forward.py [--layers 8] [--batch 4] [--seq 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Llama-style shape at ~0.5 GB in float32 with 8 layers (GQA 16/4 heads, untied embeddings).
MODEL = dict(
    vocab_size=16000, hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
    num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's RSS every few milliseconds in a background thread."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def build_checkpoint(path: Path, layers: int) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=layers, **MODEL)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path, max_shard_size="10GB")


def best_of(repeats: int, step) -> float:
    """Fastest of ``repeats`` timed calls: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def batch_ids(batch: int, seq: int):
    import numpy as np

    return np.random.RandomState(0).randint(0, MODEL["vocab_size"], size=(batch, seq)).astype(np.int32)


def worker_jaxalign(path: Path, batch: int, seq: int, repeats: int) -> dict:
    import gc

    import jax
    import jax.numpy as jnp

    from jaxalign.models import load_pretrained

    jnp.zeros(1).block_until_ready()  # start the backend before the baseline
    gc.collect()
    baseline = rss_bytes()
    start = time.perf_counter()
    with PeakRss() as peak:
        model = load_pretrained(path)
        jax.block_until_ready(jax.tree.leaves(model))
    load_s = time.perf_counter() - start

    ids = jnp.asarray(batch_ids(batch, seq))
    forward = jax.jit(lambda m, x: m(x))
    start = time.perf_counter()
    forward(model, ids).block_until_ready()
    compile_s = time.perf_counter() - start
    step_s = best_of(repeats, lambda: forward(model, ids).block_until_ready())
    return dict(baseline=baseline, peak=peak.peak, after_forward=rss_bytes(), load_s=load_s, compile_s=compile_s, step_s=step_s)


def worker_transformers(path: Path, batch: int, seq: int, repeats: int) -> dict:
    import gc

    import torch
    import transformers

    torch.zeros(1)
    gc.collect()
    baseline = rss_bytes()
    start = time.perf_counter()
    with PeakRss() as peak:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start

    ids = torch.tensor(batch_ids(batch, seq), dtype=torch.long)
    with torch.no_grad():
        start = time.perf_counter()
        model(ids)
        compile_s = time.perf_counter() - start  # first call: warm-up, no compilation
        step_s = best_of(repeats, lambda: model(ids))
    return dict(baseline=baseline, peak=peak.peak, after_forward=rss_bytes(), load_s=load_s, compile_s=compile_s, step_s=step_s)


def run_worker(kind: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--path", str(path), "--layers", str(args.layers),
           "--batch", str(args.batch), "--seq", str(args.seq), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(size: int, tokens: int, results: dict[str, dict]) -> None:
    mb = 1e6
    rows = [
        ("checkpoint size (MB)", lambda r: size / mb),
        ("baseline RSS after imports (MB)", lambda r: r["baseline"] / mb),
        ("peak RSS during load, above baseline (MB)", lambda r: (r["peak"] - r["baseline"]) / mb),
        ("  as a ratio to checkpoint size (x)", lambda r: (r["peak"] - r["baseline"]) / size),
        ("RSS after the forward passes, above baseline (MB)", lambda r: (r["after_forward"] - r["baseline"]) / mb),
        ("load time (s)", lambda r: r["load_s"]),
        ("first forward incl. compile/warm-up (s)", lambda r: r["compile_s"]),
        ("forward time per batch, best of --repeats (s)", lambda r: r["step_s"]),
        ("forward throughput (tokens/s)", lambda r: tokens / r["step_s"]),
    ]
    ours, theirs = results["jaxalign"], results["transformers"]
    print(f"{'':50s} {'jaxalign':>12s} {'transformers':>13s} {'ratio':>8s}")
    for label, value in rows:
        a, b = value(ours), value(theirs)
        print(f"{label:50s} {a:12.3f} {b:13.3f} {a / b if b else float('nan'):8.2f}")


def main() -> None:
    import common

    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", choices=["build", "jaxalign", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "build":
        build_checkpoint(args.path, args.layers)
        print(json.dumps({}))
        return
    if args.worker:
        worker = worker_jaxalign if args.worker == "jaxalign" else worker_transformers
        print(json.dumps(worker(args.path, args.batch, args.seq, args.repeats)))
        return

    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-") as tmp:
        path = Path(tmp)
        run_worker("build", path, args)
        size = checkpoint_bytes(path)
        print(f"checkpoint: {path} ({size / 1e6:.0f} MB, {args.layers} layers); "
              f"batch {args.batch} x {args.seq} tokens; {os.cpu_count()} CPU cores\n")
        results = {kind: run_worker(kind, path, args) for kind in ("jaxalign", "transformers")}
    report(size, args.batch * args.seq, results)
    ratio = (results["jaxalign"]["peak"] - results["jaxalign"]["baseline"]) / size
    print(f"\njaxalign peak load RSS / checkpoint = {ratio:.2f}x (target < 1.5x): {'OK' if ratio < 1.5 else 'OVER'}")
    print("transformers memory-maps the safetensors file: its weights become resident only as the forward pass reads them.")


if __name__ == "__main__":
    main()
