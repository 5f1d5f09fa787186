"""Peak memory and step time of a DPO step with LoRA against full fine-tuning, on a ~500M model.

The model has Qwen2.5-0.5B's architecture (494M parameters, random weights: memory
and time do not depend on the values). The batch is ``--pairs`` preference pairs of
a ``--prompt``-token prompt and two ``--reply``-token replies (synthetic text over
the built-in tokenizer), packed as jaxalign packs them (one pair a row).

For each variant the train step is compiled exactly as the trainer compiles it (the
state donated, the frozen models an input) on one CPU device, and XLA's
``memory_analysis()`` of the compiled step gives its peak: arguments + outputs not
aliased to the donated state + temporaries. No step needs to run for that. Variants:

* ``full``: every weight trains (float32 weights and AdamW state), the reference is a
  frozen copy of the starting policy;
* ``lora``: LoRA adapters (``--rank``, every linear map) on the same float32 base; the
  reference is the base with adapters off (no copy);
* ``lora-bf16``: the same with the frozen base and the compute in bfloat16
  (adapters and their AdamW state in float32) -- memory only.

``--cpu-scheduler memory`` compiles with XLA:CPU's concurrency-optimized scheduler off
(``--xla_cpu_enable_concurrency_optimized_scheduler=false``): that scheduler, on by
default, trades memory for parallel execution of independent operations, which GPU and
TPU schedulers do not; with it off the peak is closer to what ``jaxalign plan`` assumes.
The planner's figure for each variant is printed alongside.

With ``--time``, each float32 variant whose peak fits in the machine's available
memory (with 30% to spare) also runs ``--steps`` timed steps after one warm-up step.

Usage::

    python benchmarks/lora_memory.py [--remat none full] [--cpu-scheduler default|memory] [--time] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets JAX_PLATFORMS=cpu before jax is imported)

QWEN2_5_0_5B = {  # Qwen/Qwen2.5-0.5B's config.json (architecture fields)
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
GIB = 1024**3


def synthetic_pairs(path: Path, pairs: int, prompt: int, reply: int, seed: int = 0) -> None:
    """Preference rows of random words; each word of the built-in tokenizer's alphabet is a token or two,
    so lengths are trimmed to size by the pipeline (``max_prompt_length``, ``max_length``)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "paper", "green", "cloud"]

    def text(tokens: int) -> str:
        return " " + " ".join(rng.choice(words) for _ in range(tokens))

    with open(path, "w") as handle:
        for _ in range(pairs):
            handle.write(json.dumps({"prompt": text(prompt), "chosen": text(reply), "rejected": text(reply)}) + "\n")


def run_config(tmp: Path, variant: str, remat: str, args) -> dict:
    dtype = "bfloat16" if variant == "lora-bf16" else "float32"
    config = {
        "algo": "dpo", "run_dir": str(tmp / f"run-{variant}-{remat}"), "max_steps": args.steps + 1, "export": False,
        "model": {"config": dict(QWEN2_5_0_5B), "tokenizer": "builtin", "param_dtype": dtype, "dtype": dtype,
                  "remat": remat},
        "data": {"train": str(tmp / "pairs.jsonl"), "eval": None, "batch_size": args.pairs, "shuffle": False,
                 "max_prompt_length": args.prompt, "max_length": args.prompt + args.reply,
                 "on_overlong": "truncate", "pad_to_multiple": 64},
        "loss": {"name": "sigmoid", "beta": 0.1},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "log": {"sinks": []},
    }
    if variant != "full":
        config["lora"] = {"rank": args.rank}
    return config


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(variant: str, remat: str, args, tmp: Path) -> dict:
    import jax

    from jaxalign.config import config_class
    from jaxalign.configlib import from_dict
    from jaxalign.data import build_pipeline, load_tokenizer
    from jaxalign.sharding import MeshConfig, make_mesh, shard_batch

    cfg = from_dict(config_class("dpo"), run_config(tmp, variant, remat, args))
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    host_batch = next(build_pipeline(cfg.data, tokenizer, split="train", kind="preference").iterator())
    batch = shard_batch(host_batch, mesh)
    started = time.monotonic()
    run = cfg.algorithm.setup(cfg, mesh, tokenizer, args.steps + 1)
    setup_s = time.monotonic() - started
    step = jax.jit(run.train_step, donate_argnums=(0,))
    started = time.monotonic()
    compiled = step.lower(run.state, batch, run.frozen).compile()
    compile_s = time.monotonic() - started
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)
    trained = sum(leaf.size for leaf in jax.tree.leaves(run.state.params))
    from jaxalign.plan import estimate, read_model_config

    planned = estimate(cfg, 1, None, architecture=read_model_config(cfg.model, None)).total
    result = {"variant": variant, "remat": remat, "peak_gib": peak / GIB, "temp_gib": memory.temp_size_in_bytes / GIB,
              "arguments_gib": memory.argument_size_in_bytes / GIB, "trained_params": trained, "planned_gib": planned / GIB,
              "batch_shape": list(host_batch["input_ids"].shape), "setup_s": setup_s, "compile_s": compile_s}
    if args.time and variant != "lora-bf16":
        room = available_bytes()
        if peak * 1.3 > room:
            result["step_s"] = f"skipped: needs {peak / GIB:.1f} GiB, {room / GIB:.1f} GiB available"
        else:
            state, times = run.state, []
            for index in range(args.steps + 1):
                started = time.monotonic()
                state, metrics = compiled(state, batch, run.frozen)
                jax.block_until_ready(metrics)
                if index:  # the first step warms up (allocations)
                    times.append(time.monotonic() - started)
            result["step_s"] = min(times)
            result["loss"] = float(metrics["loss"])
    del run
    return result


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remat", nargs="+", default=["none", "full"], choices=["none", "full", "dots"])
    parser.add_argument("--variants", nargs="+", default=["full", "lora", "lora-bf16"],
                        choices=["full", "lora", "lora-bf16"])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--reply", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--cpu-scheduler", choices=["default", "memory"], default="default",
                        help="memory: XLA:CPU's concurrency-optimized scheduler off (see the module docstring)")
    parser.add_argument("--time", action="store_true", help="also time steps of the variants that fit in memory")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.cpu_scheduler == "memory":  # before jax initialises its backend (measure imports it)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
    common.quiet_libraries()
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-lora-") as tmp:
        tmp = Path(tmp)
        synthetic_pairs(tmp / "pairs.jsonl", args.pairs, args.prompt, args.reply)
        for remat in args.remat:
            for variant in args.variants:
                result = measure(variant, remat, args, tmp)
                results.append(result)
                print(json.dumps(result), flush=True)
    print(f"\nDPO step, Qwen2.5-0.5B architecture (494M parameters), {args.pairs} pairs of "
          f"{args.prompt}+{args.reply}+{args.reply} tokens, LoRA rank {args.rank} on every linear map")
    print(f"XLA:CPU scheduler: {args.cpu_scheduler}")
    print(f"{'remat':<6}{'variant':<11}{'peak GiB':>9}{'x full':>8}{'plan GiB':>9}{'trained':>12}{'step s':>9}")
    for result in results:
        full = next((r for r in results if r["remat"] == result["remat"] and r["variant"] == "full"), None)
        ratio = f"{result['peak_gib'] / full['peak_gib']:8.2f}" if full else f"{'-':>8}"
        step = result.get("step_s", "-")
        step = f"{step:.1f}" if isinstance(step, float) else ("-" if step == "-" else "skip")
        print(f"{result['remat']:<6}{result['variant']:<11}{result['peak_gib']:9.2f}{ratio}{result['planned_gib']:9.2f}"
              f"{result['trained_params']:12,d}{step:>9}")
    print("BENCHMARK_JSON " + json.dumps({"benchmark": "lora_memory", "cpu_scheduler": args.cpu_scheduler,
                                         "results": results}))


if __name__ == "__main__":
    main()
