"""Benchmark: n samples per prompt pay the prompt's prefill once.

Samples ``--generations`` replies for each of ``--prompts`` long prompts two ways
with the same jitted sampler and random Llama: ``generate(..., num_samples=n)``
(each prompt prefilled once, its KV cache copied to its n rows) and
``generate`` on the prompts repeated n times (every copy prefilled). Both decode
the same number of rows and tokens, so the difference is the prefill. Each is
timed with ``--new-tokens`` and with 1 new token (prefill + first token only);
the fastest of ``--repeats`` runs, alternating the two ways, is kept.

Usage::

    python benchmarks/rollout_prefill.py [--prompts 4 --generations 8 --prompt-length 256 --new-tokens 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common.quiet_libraries()

    import jax

    from jaxalign.generation import SamplingConfig, generate
    from jaxalign.models import ModelConfig, init_model

    config = ModelConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_layers=args.layers, num_heads=8, num_kv_heads=2, max_position_embeddings=4096)
    model = init_model(config, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, (args.prompts, args.prompt_length)).astype(np.int32)
    mask = np.ones_like(ids)
    n = args.generations
    repeated_ids, repeated_mask = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)

    def run(shared: bool, new_tokens: int) -> float:
        cfg = SamplingConfig(new_tokens, temperature=1.0, stop_at_eos=False)
        started = time.perf_counter()
        if shared:
            out = generate(model, ids, mask, jax.random.key(0), cfg, num_samples=n)
        else:
            out = generate(model, repeated_ids, repeated_mask, jax.random.key(0), cfg)
        out.tokens.block_until_ready()
        return time.perf_counter() - started

    runs = {(shared, new): (lambda shared=shared, new=new: run(shared, new))
            for shared in (True, False) for new in (1, args.new_tokens)}
    for fn in runs.values():
        fn()  # compile
    best = {key: float("inf") for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            best[key] = min(best[key], fn())

    rows = []
    for shared, name in ((True, "num_samples=n (one prefill per prompt)"), (False, "prompts repeated n times")):
        prefill, total = best[shared, 1], best[shared, args.new_tokens]
        rows.append([name, prefill * 1e3, total * 1e3, args.prompts * n * args.new_tokens / total])
    title = (f"{args.prompts} prompts x {n} samples, prompt {args.prompt_length} tokens, {args.new_tokens} new tokens; "
             f"Llama hidden {args.hidden} x {args.layers} layers, {jax.devices()[0].platform}, best of {args.repeats}")
    common.print_table(title, ["sampler call", "prefill + 1st token ms", "total ms", "tokens/s"], rows)
    speedup = best[False, 1] / best[True, 1]
    print(f"prefill: {speedup:.2f}x faster with one prefill per prompt (ideal {n}x minus the cache copy)")
    common.emit_json("rollout_prefill", {"config": vars(args), "best_seconds": {
        f"{'shared' if s else 'repeated'}_{t}": v for (s, t), v in best.items()}, "prefill_speedup": speedup,
        "machine": common.machine()})


if __name__ == "__main__":
    main()
