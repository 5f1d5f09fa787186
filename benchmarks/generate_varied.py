"""Benchmark: replies of varied length. Static batch vs continuous batching vs transformers' ``generate``.

The workload where continuous batching matters: ``--prompts`` prompts (16-64 tokens), up to
``--new-tokens`` new tokens, and a stop set of ``--stop-tokens`` token ids that sampling
(temperature 1, top-k 50) hits at random, so reply lengths spread from 1 to the cap (about
geometric, mean ~ vocabulary / (top-k share of stops); the cap is hit by a few rows). Same
random ~34M-parameter Llama as ``generate_vs_hf.py``.

- transformers: all prompts in one ``generate`` call (it stops once every row has stopped).
- jaxalign static: ``SamplingConfig(slots=0)``: every row at once, until the longest stops.
- jaxalign continuous: ``slots`` rows live; a stopped row's slot takes the next prompt.

Tokens/s counts the reply tokens (up to and including the stop token) over wall time; the
best of ``--repeats`` interleaved runs is kept for each side. jaxalign's static and continuous
runs must produce the same tokens (checked). Compile time is reported apart.

Usage::

    python benchmarks/generate_varied.py [--prompts 64] [--new-tokens 256] [--slots 16,32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_model, emit_json  # noqa: E402
from generate_vs_hf import MODEL, load_both, mixed_prompts  # noqa: E402


def reply_lengths(tokens: np.ndarray, stops: set[int]) -> np.ndarray:
    """Per row: tokens up to and including the first stop token (all of them if none)."""
    hit = np.isin(tokens, list(stops))
    return np.where(hit.any(-1), hit.argmax(-1) + 1, tokens.shape[1])


def main() -> None:
    import common

    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--stop-tokens", type=int, default=500, help="ids 1..N stop a reply")
    parser.add_argument("--slots", default="16,32", help="continuous-batching slot counts to time")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-threads", default="2", help="torch thread counts to try (the fastest is kept)")
    args = parser.parse_args()

    import dataclasses

    import jax
    import torch

    from jaxalign.generation import SamplingConfig, generate

    num_params, hf_model, model = load_both()
    ids, mask = mixed_prompts(args.prompts, 16, 64, MODEL["vocab_size"])
    stops = set(range(1, args.stop_tokens + 1))
    new = args.new_tokens
    base = SamplingConfig(new, temperature=1.0, top_k=args.top_k, stop_token_ids=tuple(sorted(stops)),
                          stop_at_eos=False)
    jax_ids, jax_mask = jax.device_put(ids.astype(np.int32)), jax.device_put(mask.astype(np.int32))
    results: dict[str, np.ndarray] = {}

    def run_jax(slots: int) -> int:
        out = generate(model, jax_ids, jax_mask, jax.random.key(0), dataclasses.replace(base, slots=slots))
        results[f"jax{slots}"] = np.asarray(out.tokens)
        return int(np.asarray(out.lengths).sum())

    def run_hf(threads: int) -> int:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        with torch.inference_mode():
            out = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new,
                                    do_sample=True, top_k=args.top_k, temperature=1.0, pad_token_id=0,
                                    eos_token_id=sorted(stops))
        return int(reply_lengths(out[:, ids.shape[1]:].numpy(), stops).sum())

    slot_counts = [int(s) for s in args.slots.split(",") if s]
    runs = {"jaxalign static": lambda: run_jax(0)}
    runs.update({f"jaxalign {s} slots": (lambda s=s: run_jax(s)) for s in slot_counts})
    runs.update({f"transformers ({t} thr)": (lambda t=t: run_hf(t)) for t in map(int, args.torch_threads.split(","))})
    compile_s = {}
    for name, run in runs.items():  # warm-up: compiles (jax) and first-call overheads (torch)
        started = time.perf_counter()
        run()
        compile_s[name] = time.perf_counter() - started
    best = {name: (float("inf"), 0) for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            tokens = run()
            wall = time.perf_counter() - started
            if wall < best[name][0]:
                best[name] = (wall, tokens)
    for s in slot_counts:  # the determinism a user relies on: slots change the speed, not the replies
        np.testing.assert_array_equal(results[f"jax{s}"], results["jax0"])

    lengths = reply_lengths(results["jax0"], stops)
    print(f"model: Llama, {num_params / 1e6:.1f}M parameters, float32; {jax.devices()[0].platform}, "
          f"{cpu_model()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}")
    print(f"{args.prompts} prompts of 16-64 tokens, up to {new} new tokens, top-k {args.top_k}, {len(stops)} stop ids; "
          f"jaxalign reply lengths: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}")
    hf = min(best[name][1] / best[name][0] for name in runs if name.startswith("transformers"))
    for name, (wall, tokens) in best.items():
        rate = tokens / wall
        print(f"{name:>24}: {rate:8.1f} reply tokens/s | {wall:6.2f} s for {tokens} tokens | "
              f"{rate / hf:5.2f}x transformers | first call {compile_s[name]:.1f} s")
    emit_json("generate_varied", {
        "prompts": args.prompts, "new_tokens": new, "stop_tokens": len(stops), "top_k": args.top_k,
        "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
        "runs": {name: {"seconds": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                        "vs_transformers": tokens / wall / hf, "first_call_s": compile_s[name]}
                 for name, (wall, tokens) in best.items()},
    })


if __name__ == "__main__":
    main()
