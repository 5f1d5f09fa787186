"""Times every attention backend on packed DPO rows: forward, and forward + backward.

Rows are packed like jaxalign's DPO batches: [prompt | chosen | rejected]
examples (prompt 64-256 tokens, each reply 32-192, seeded), each example its
own segment, the rejected reply on branch 2 so it does not see the chosen one,
the row's tail padding. Each backend gets the same q/k/v and layout and is
jitted as the decoder runs it (``attention_layout`` + ``attend``); the table
gives the median milliseconds of ``--repeats`` calls, the compiled temporary
memory (XLA's memory analysis) and the largest difference from the ``xla``
(dense reference) output on real tokens.

Backends run where they can: ``cudnn`` needs a GPU and a half dtype;
``pallas`` runs everywhere but on CPU only in interpret mode (minutes: left
out on CPU unless named in ``--backends``).

Usage (GPU; one command, about a minute)::

    python benchmarks/attention_backends.py --dtype bfloat16 --lengths 1024 2048 4096

CPU (this machine; tiled and xla)::

    python benchmarks/attention_backends.py --dtype float32 --lengths 512 1024 --heads 8 --kv-heads 8 --dim 64
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# jax before benchmarks/common.py, whose import defaults JAX_PLATFORMS to cpu (for the
# CPU benchmarks); here the platform is whatever this machine has.
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from jaxalign.batch import ATTENTION_TILE  # noqa: E402
from jaxalign.data.tile_pairs import attention_tile_pairs  # noqa: E402
from jaxalign.models.attention import attend  # noqa: E402
from jaxalign.models.attention_backends import HALF_DTYPES, attention_layout  # noqa: E402


def packed_rows(rng: np.random.Generator, rows: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """segment, branch and position ids ``[rows, length]`` of packed [prompt | chosen | rejected] examples."""
    segments, branches, positions = (np.zeros((rows, length), np.int32) for _ in range(3))
    for r in range(rows):
        start, slot = 0, 1
        while True:
            prompt, chosen, rejected = int(rng.integers(64, 257)), int(rng.integers(32, 193)), int(rng.integers(32, 193))
            stop = start + prompt + chosen + rejected
            if stop > length:
                break
            segments[r, start:stop] = slot
            branches[r, start + prompt:start + prompt + chosen] = 1
            branches[r, start + prompt + chosen:stop] = 2
            positions[r, start:start + prompt + chosen] = np.arange(prompt + chosen)
            positions[r, start + prompt + chosen:stop] = np.arange(prompt, prompt + rejected)
            start, slot = stop, slot + 1
    return segments, branches, positions


def backends_here(dtype: str) -> list[str]:
    on_gpu = jax.default_backend() == "gpu"
    names = ["xla", "tiled"]
    if on_gpu and dtype in HALF_DTYPES:
        names.append("cudnn")
    if jax.default_backend() != "cpu":
        names.append("pallas")
    return names


def time_calls(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def temp_bytes(fn, args) -> float:
    try:
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # not every backend reports it
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend this platform runs")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    backends = args.backends or backends_here(args.dtype)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), cpu: {common.cpu_model()}, "
          f"host {platform.node()}, jax {jax.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"rows {args.rows}, heads {args.heads}/{args.kv_heads} kv, head dim {args.dim}, {args.dtype}")

    dtype = jnp.dtype(args.dtype)
    results, table = [], []
    for length in args.lengths:
        rng = np.random.default_rng(length)
        segments, branches, positions = packed_rows(rng, args.rows, length)
        pairs = attention_tile_pairs(segments, branches, ATTENTION_TILE)
        real = jnp.asarray(segments != 0)[:, :, None, None]
        ids = tuple(jnp.asarray(x) for x in (segments, branches, positions))
        q = jnp.asarray(rng.normal(size=(args.rows, length, args.heads, args.dim)), dtype)
        k, v = (jnp.asarray(rng.normal(size=(args.rows, length, args.kv_heads, args.dim)), dtype) for _ in range(2))
        scale = args.dim ** -0.5
        reference = None
        for backend in backends:
            def forward(q, k, v, segments, branches, positions, tile_pairs, backend=backend):
                layout = attention_layout(backend, segments, branches, positions, tile_pairs)
                return attend(q, k, v, layout, scale)

            def loss(q, k, v, *rest, forward=forward):
                return jnp.sum((forward(q, k, v, *rest) * real).astype(jnp.float32) ** 2)

            call_args = (q, k, v, *ids, jnp.asarray(pairs))
            fwd = jax.jit(forward)
            fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            try:
                out = fwd(*call_args)
            except Exception as error:  # a backend this device cannot run: say so, go on
                print(f"  {backend} at {length}: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
                continue
            if reference is None:
                reference = out
            difference = float(jnp.max(jnp.abs((out.astype(jnp.float32) - reference.astype(jnp.float32)) * real)))
            row = dict(length=length, backend=backend,
                       forward_ms=1e3 * time_calls(fwd, call_args, args.repeats),
                       forward_backward_ms=1e3 * time_calls(fwd_bwd, call_args, args.repeats),
                       forward_temp_mib=temp_bytes(fwd, call_args) / 2 ** 20,
                       forward_backward_temp_mib=temp_bytes(fwd_bwd, call_args) / 2 ** 20,
                       max_abs_diff_vs_first=difference)
            results.append(row)
            table.append([length, backend, row["forward_ms"], row["forward_backward_ms"],
                          row["forward_temp_mib"], row["forward_backward_temp_mib"], difference])
            print(f"  {length} {backend}: forward {row['forward_ms']:.2f} ms, "
                  f"forward+backward {row['forward_backward_ms']:.2f} ms", flush=True)
    fill = float(np.mean(segments != 0))
    common.print_table(f"attention backends (median of {args.repeats}; last length's row fill {fill:.2f})",
                       ["length", "backend", "fwd ms", "fwd+bwd ms", "fwd temp MiB", "fwd+bwd temp MiB",
                        "max |diff| vs first"], table)
    common.emit_json("attention_backends", {"device": device.device_kind, "platform": jax.default_backend(),
                                            "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
