"""Model-FLOPs utilisation of jaxalign's DPO step on an accelerator: a ~1B Llama in bfloat16.

Builds a random-init Llama from ``model.config`` (no checkpoint folder; by
default hidden 2048, 16 layers, 16 query / 8 key-value heads of 128, MLP
5632, GPT-2's 50,257-token vocabulary, untied head: 0.96B parameters), trains
it with jaxalign's own ``Trainer`` (the path ``jaxalign train`` takes: Grain
batches packed and bucketed, the jitted donated DPO step with the reference
forward inside it, the metrics window) on HH-RLHF pairs from
``tests/data/real``, and times optimizer steps one by one
(``common.JaxalignStepper``: seconds spent compiling are taken out).

Model FLOPs per step are ``common.useful_flops`` (6 N T for the policy's
forward and backward, 2 N T for the reference forward, the vocabulary
projection on the completion tokens only; T counts real tokens with each
pair's prompt once, so padding counts against utilisation). Attention's
score and value products are *not* counted, so the figure is a lower bound
of the PaLM-style MFU (at these lengths they would add a few percent).

MFU is reported against the datasheet's dense bfloat16 peak (``--peak-tflops``,
H100/H200 SXM: 989) and against this device's measured bfloat16 matmul rate
(an 8192^3 product, the best of 10; 1024^3 on a CPU).

Usage (GPU; about 1.5 minutes on an H200, most of it building the model and compiling)::

    python benchmarks/gpu_mfu.py

CPU smoke run (the same code path on a toy model)::

    python benchmarks/gpu_mfu.py --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 \
        --pairs 4 --max-length 256 --steps 3 --dtype float32 --peak-tflops 0.2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# jax before benchmarks/common.py, whose import defaults JAX_PLATFORMS to cpu.
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import side_by_side  # noqa: E402

from jaxalign.models.attention_backends import resolve_backend  # noqa: E402


PROFILED_STEPS = 3


def matmul_peak(dtype: str, n: int, repeats: int = 10) -> float:
    """This device's measured matmul FLOP/s in ``dtype``: best of ``repeats`` n^3 products."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return 2.0 * n ** 3 / min(common.timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs per step")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-shapes", type=int, default=2, help="data.max_shapes: batch shapes (compiles) per run")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16", help="model.dtype (compute); parameters stay float32")
    parser.add_argument("--attention", default="auto", help="model.attention")
    parser.add_argument("--remat", default="none", help="model.remat")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="after the timed steps, trace 3 more with jax.profiler into DIR and print the top operations")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense peak in --dtype, TFLOP/s (datasheet; H100/H200 SXM bf16: 989)")
    args = parser.parse_args()

    common.quiet_libraries()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)), "
          f"jax {jax.__version__}, cpu: {common.cpu_model()}", flush=True)
    measured_peak = matmul_peak(args.dtype, 8192 if jax.default_backend() != "cpu" else 1024)
    print(f"measured {args.dtype} matmul: {measured_peak / 1e12:.1f} TFLOP/s "
          f"(datasheet peak given: {args.peak_tflops:g})", flush=True)

    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
    rows, counts = common.hh_pairs(paths[common.HH_FILE], tokenizer, args.max_length)
    llama = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=args.hidden,
                 num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                 intermediate_size=args.intermediate, max_position_embeddings=2 * args.max_length,
                 tie_word_embeddings=False, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256)
    params = common.llama_params(llama)
    total = sum(params.values())
    print(f"model: {total / 1e9:.2f}B parameters ({params['non_embedding'] / 1e9:.2f}B non-embedding); "
          f"HH-RLHF pairs: {counts}", flush=True)

    def model_flops(batch: dict) -> float:
        """``common.useful_flops`` of one batch's census (policy, reference and projection)."""
        return common.useful_flops(params["non_embedding"], args.hidden, llama["vocab_size"], batch["tokens"],
                                   batch["completion_tokens"], reference=True, lm_head=True)

    def utilisation(flops: float, seconds: float) -> tuple[float, float]:
        """MFU against the datasheet peak and against the measured matmul rate."""
        return flops / seconds / (args.peak_tflops * 1e12), flops / seconds / measured_peak

    with tempfile.TemporaryDirectory() as tmp:
        data = common.write_jsonl(Path(tmp) / "hh.jsonl", rows)
        config = side_by_side._jaxalign_config("dpo", Path(tmp) / "run", Path(tmp), str(paths[common.GPT2_TOKENIZER]),
                                               str(data), args.pairs, args.max_length, 1e-6, args.steps, None)
        config["model"] = {"config": llama, "tokenizer": str(paths[common.GPT2_TOKENIZER]), "dtype": args.dtype,
                           "attention": args.attention, "remat": args.remat}
        config["data"]["max_shapes"] = args.max_shapes
        config["loss"] = {"name": "sigmoid", "beta": 0.1}
        start = time.perf_counter()
        trainer = side_by_side.jaxalign_trainer(config)
        backend = resolve_backend(args.attention, args.dtype, has_tiles=True)
        print(f"trainer built in {time.perf_counter() - start:.1f} s; attention backend {backend}", flush=True)
        stepper = common.JaxalignStepper(trainer)
        records = []
        for number in range(1, args.steps + 1):
            record = stepper.step()
            flops = model_flops(record)
            mfu, mfu_measured = utilisation(flops, record["run_seconds"])
            record.update(model_tflop=flops / 1e12, mfu=mfu, mfu_measured_peak=mfu_measured)
            records.append(record)
            print(f"  step {number}: {record['seconds']:.2f} s (compile {record['compile_seconds']:.2f} s), "
                  f"shape {record['rows']}x{record['length']}, {record['tokens']} tokens "
                  f"({record['tokens'] / record['slots']:.2f} of positions), "
                  f"{record['model_tflop']:.1f} TFLOP, MFU {record['mfu']:.3f} "
                  f"({record['mfu_measured_peak']:.3f} of measured)", flush=True)
        # The training loop itself does not wait for each step: the host packs and transfers the next
        # batch while the device runs this one. The same number of steps again, timed as a whole.
        compiles, census = stepper.compiles(), len(stepper._census)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer._optimizer_step(stepper._iterator, stepper._window)
        jax.block_until_ready(trainer.state)
        pipelined_seconds = time.perf_counter() - start
        batches = stepper._census[census:]
        mfu, mfu_measured = utilisation(sum(model_flops(b) for b in batches), pipelined_seconds)
        pipelined = {"steps": len(batches), "seconds": pipelined_seconds, "new_compiles": stepper.compiles() - compiles,
                     "tokens_per_second": sum(b["tokens"] for b in batches) / pipelined_seconds,
                     "mfu": mfu, "mfu_of_measured_peak": mfu_measured}
        print(f"  {len(batches)} steps back to back: {pipelined_seconds / len(batches):.3f} s a step, MFU "
              f"{pipelined['mfu']:.3f} ({pipelined['mfu_of_measured_peak']:.3f} of measured; "
              f"{pipelined['new_compiles']} new compiles)", flush=True)

        if args.profile:  # after the timed steps, so the trace's overhead is in none of them
            jax.profiler.start_trace(args.profile, create_perfetto_trace=True)
            for _ in range(PROFILED_STEPS):
                stepper.step()
            jax.profiler.stop_trace()

    steady = [r for r in records if not r["compiled"]] or records
    summary = {
        "device": device.device_kind, "platform": jax.default_backend(), "jax": jax.__version__,
        "parameters": total, "non_embedding": params["non_embedding"], "args": vars(args),
        "measured_peak_tflops": measured_peak / 1e12, "compiled_steps": sum(r["compiled"] for r in records),
        "compile_seconds": sum(r["compile_seconds"] for r in records),
        "steady_steps": len(steady), "median_step_seconds": statistics.median(r["run_seconds"] for r in steady),
        "median_tokens_per_second": statistics.median(r["tokens"] / r["run_seconds"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady),
        "mfu_of_measured_peak": statistics.median(r["mfu_measured_peak"] for r in steady),
        "real_token_share": statistics.median(r["tokens"] / r["slots"] for r in steady),
        "back_to_back": pipelined, "steps": records,
    }
    common.print_table(f"DPO step, {total / 1e9:.2f}B Llama, {args.dtype}, {args.pairs} pairs, "
                       f"median of {len(steady)} steps that met no new shape",
                       ["device", "step s", "tokens/s", "MFU (datasheet peak)", "MFU (measured peak)", "real-token share"],
                       [[device.device_kind, summary["median_step_seconds"], summary["median_tokens_per_second"],
                         summary["mfu"], summary["mfu_of_measured_peak"], summary["real_token_share"]]])
    if args.profile:
        top = common.trace_summary(args.profile, PROFILED_STEPS)
        summary["profile_top"] = top
        common.print_table(f"top operations over {PROFILED_STEPS} profiled steps (ms per step; profiler overhead included)",
                           ["where", "operation", "ms/step", "calls/step"],
                           [[row["where"][:28], row["name"][:70], row["ms_per_step"], row["calls_per_step"]] for row in top])
    common.emit_json("gpu_mfu", summary)


if __name__ == "__main__":
    main()
