"""Benchmark: sampling with ``jaxalign.generation.generate`` vs transformers' ``generate``, side by side.

Builds one random float32 Llama checkpoint (~34M parameters by default) in a
temp dir, loads it on both sides, and samples ``--batch`` left-padded prompts
of mixed lengths x ``--new-tokens`` tokens with the same settings (temperature
1, top-k 50 by default). EOS is ignored on both sides so every run produces
exactly batch x new-tokens tokens. Runs alternate between the two sides and
the fastest of ``--repeats`` is kept for each (the least disturbed on a shared
machine). Per-step time is split from prefill by also timing 1-token runs:
``ms/step = (t(N) - t(1)) / (N - 1)``, in wall time and in this process's CPU
time (steadier when other jobs share the cores). jax compile time is reported
apart, and so is the floor: the step's weight matmuls alone in a jitted loop.

Usage::

    python benchmarks/generate_vs_hf.py [--batch 16] [--new-tokens 128] [--top-k 50 | --top-p 0.9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

# Llama shape at ~34M parameters (untied 32k vocabulary, GQA 6/2 heads).
MODEL = dict(
    vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
)


def build_checkpoint(path: Path) -> int:
    """Saves a random Llama; returns its parameter count."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**MODEL))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def load_both():
    """(parameter count, transformers model, jaxalign model) of one random checkpoint built in a temp dir."""
    import torch
    import transformers

    from jaxalign.models import load_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama"
        num_params = build_checkpoint(path)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return num_params, hf_model, load_pretrained(path)


def mixed_prompts(batch: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and mask ``[batch, max_len]`` with prompt lengths spread over [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(min_len, max_len, batch).astype(int)
    ids = np.zeros((batch, max_len), np.int64)
    mask = np.zeros((batch, max_len), np.int64)
    for row, length in enumerate(lengths):
        ids[row, max_len - length:] = rng.integers(1, vocab, length)
        mask[row, max_len - length:] = 1
    return ids, mask


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): less disturbed by other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def matmul_floor(model, batch: int, steps: int) -> Callable[[], object]:
    """The decode step's weight matmuls alone (q/k/v/o, MLP, LM head; no attention, cache or
    sampling) for ``steps`` steps in one jitted loop: the floor a decode step cannot beat."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    hidden = model.config.hidden_size

    @jax.jit
    def loop(state, x):
        m = nnx.merge(graphdef, state)

        def step(_, x):
            for block in m.model.layers:
                attn = block.self_attn
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
                x = x + attn.o_proj(q) + 0 * (k.sum() + v.sum())
                x = x + block.mlp(x)
            return x + m.logits_from_hidden(x)[:, :hidden]

        return jax.lax.fori_loop(0, steps, step, x)

    x = jnp.full((batch, hidden), 0.01, jnp.float32)
    return lambda: jax.block_until_ready(loop(state, x))


def main() -> None:
    import common

    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-min", type=int, default=16)
    parser.add_argument("--prompt-max", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", default="1,2",
                        help="torch thread counts to try; transformers is credited with the fastest (its OpenMP "
                             "threads spin-wait and slow down badly when other jobs share the cores)")
    args = parser.parse_args()

    import jax
    import torch

    from jaxalign.generation import SamplingConfig, generate

    num_params, hf_model, model = load_both()
    ids, mask = mixed_prompts(args.batch, args.prompt_min, args.prompt_max, MODEL["vocab_size"])
    torch_ids, torch_mask = torch.tensor(ids), torch.tensor(mask)
    jax_ids, jax_mask = jax.device_put(ids.astype(np.int32)), jax.device_put(mask.astype(np.int32))
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    def run_hf(new_tokens: int) -> None:
        with torch.inference_mode():
            out = hf_model.generate(
                input_ids=torch_ids, attention_mask=torch_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=True, pad_token_id=0, eos_token_id=None, **sampling,
            )
        assert out.shape == (args.batch, ids.shape[1] + new_tokens)

    def run_jax(new_tokens: int, seed: int = 0) -> None:
        cfg = SamplingConfig(max_new_tokens=new_tokens, stop_at_eos=False, **sampling)
        out = generate(model, jax_ids, jax_mask, jax.random.key(seed), cfg)
        assert int(out.steps) == new_tokens
        out.tokens.block_until_ready()

    compile_s = {n: timed(lambda n=n: run_jax(n))[0] for n in (1, args.new_tokens)}
    floor = matmul_floor(model, args.batch, args.new_tokens - 1)
    floor()  # compile
    run_hf(2)  # warm-up
    n, tokens = args.new_tokens, args.batch * args.new_tokens
    thread_counts = [int(t) for t in args.torch_threads.split(",")]

    def with_threads(count: int, new_tokens: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(count)
            run_hf(new_tokens)
        return run

    runs = {("jax", 1): lambda: run_jax(1), ("jax", n): lambda: run_jax(n), ("floor", n): floor}
    for count in thread_counts:
        runs[f"hf{count}", 1], runs[f"hf{count}", n] = with_threads(count, 1), with_threads(count, n)
    best = {key: (float("inf"), float("inf")) for key in runs}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine
        for key, run in runs.items():
            wall, cpu = timed(run)
            best[key] = (min(best[key][0], wall), min(best[key][1], cpu))

    print(f"model: Llama, {num_params / 1e6:.1f}M parameters, float32; {jax.devices()[0].platform} "
          f"({jax.device_count()} device(s)), {os.cpu_count()} CPU cores")
    print(f"batch {args.batch} prompts of {args.prompt_min}-{args.prompt_max} tokens (left-padded), "
          f"{n} new tokens, sampling {sampling}; best of {args.repeats}; jax compile {compile_s[n]:.1f} s (apart)")
    total = {}
    sides = [(f"hf{count}", f"transformers ({count} thr)") for count in thread_counts] + [("jax", "jaxalign generate")]
    for side, name in sides:
        (wall, cpu), (wall_1, cpu_1) = best[side, n], best[side, 1]
        total[side] = wall
        print(f"{name:>22}: {tokens / wall:7.1f} tokens/s | total {wall * 1e3:7.0f} ms | prefill + 1st token "
              f"{wall_1 * 1e3:5.0f} ms | per decode step {(wall - wall_1) / (n - 1) * 1e3:6.2f} ms wall, "
              f"{(cpu - cpu_1) / (n - 1) * 1e3:6.2f} ms CPU")
    floor_wall, floor_cpu = best["floor", n]
    print(f"{'XLA matmuls alone':>22}: per decode step {floor_wall / (n - 1) * 1e3:6.2f} ms wall, "
          f"{floor_cpu / (n - 1) * 1e3:6.2f} ms CPU")
    fastest_hf = min(total[f"hf{count}"] for count in thread_counts)
    print(f"speed-up (tokens/s, jaxalign / fastest transformers): {fastest_hf / total['jax']:.2f}x")


if __name__ == "__main__":
    main()
