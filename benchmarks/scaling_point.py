"""One point of the scaling benchmark (``scaling.py``), run in a fresh process.

A training point (``--train SPEC``) is three processes: this one coordinates,
and each side trains in its own worker (``side_processes.run_in_side_processes``),
so that each side's RSS high-water mark (``ru_maxrss``) is its own; the sides
take turns step by step.

A generation point (``--generate SPEC``) loads one Llama on both sides in this
process and times ``jaxalign.generation.generate`` and transformers'
``generate`` alternately, best of ``repeats``, compile time apart.

Each prints one ``SCALING_POINT {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import side_processes  # noqa: E402


def train_point(spec: dict) -> dict:
    """Runs one (workload, max_length, pairs) point; returns its measurements."""
    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
    total = spec["warmup"] + spec["steps"]
    # Every step trains on the same pairs, so every step has the same shape on both
    # sides: one compile (in the warm-up), and the timed steps measure growth with
    # length or pairs, not the mix of shapes a data order happens to produce (that
    # is dpo_vs_trl.py's subject). One spare batch: jaxalign's packer may look ahead.
    pairs, data = common.hh_pairs_to_length(paths[common.HH_FILE], tokenizer, spec["max_length"], spec["pairs"])
    rows = pairs * (total + 1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jaxalign-scaling-") as tmp:
        tmp = Path(tmp)
        trl_rows = rows if spec["workload"] == "dpo" else [
            {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
        side_spec = {**spec, "tmp": str(tmp), "tokenizer": str(paths[common.GPT2_TOKENIZER]),
                     "trl_tokenizer": str(paths[common.GPT2_TOKENIZER]),
                     "data": str(common.write_jsonl(tmp / "pairs.jsonl", rows)),
                     "trl_rows": str(common.write_jsonl(tmp / "trl_rows.jsonl", trl_rows))}
        try:
            result = side_processes.run_in_side_processes(side_spec)
        except Exception as error:
            raise RuntimeError(f"point {spec['workload']} L={spec['max_length']} pairs={spec['pairs']}") from error
    records, warmup = result["jaxalign"], spec["warmup"]
    timed_jax, timed_trl = records[warmup:], result["trl_seconds"][warmup:]
    census = result["trl_census"][warmup:total]
    return {
        "kind": "train", "workload": spec["workload"], "max_length": spec["max_length"], "pairs": spec["pairs"],
        "jaxalign_s": common.stats([r["run_seconds"] for r in timed_jax])["median"],
        "trl_s": common.stats(timed_trl)["median"],
        "jaxalign_compile_s": sum(r["compile_seconds"] for r in records), "compiles": result["compiles"],
        "timed_steps_with_new_shape": sum(r["compiled"] for r in timed_jax),
        "jaxalign_peak_rss_mb": result["peak_rss_mb"]["jaxalign"], "trl_peak_rss_mb": result["peak_rss_mb"]["trl"],
        "jaxalign_ready_rss_mb": result["ready_rss_mb"]["jaxalign"], "trl_ready_rss_mb": result["ready_rss_mb"]["trl"],
        "jaxalign_tokens_per_step": common.stats([r["tokens"] for r in timed_jax])["mean"],
        "jaxalign_slots_per_step": common.stats([r["slots"] for r in timed_jax])["mean"],
        "trl_slots_per_step": common.stats([c["slots"] for c in census])["mean"],
        "pair_length_mean": data["mean_length"], "pair_length_min": data["min_length"],
        "steps": spec["steps"], "warmup": warmup, "load_average": [load_before, os.getloadavg()[0]],
        "jaxalign_step_seconds": [r["run_seconds"] for r in records], "trl_step_seconds": result["trl_seconds"],
    }


# --------------------------------------------------------------------- generation


def generate_point(spec: dict) -> dict:
    """Times one (batch, new tokens) generation on both sides: sampling with
    temperature 1 / top-k 50, EOS ignored, left-padded prompts of 16-64 tokens
    (``generate_vs_hf.mixed_prompts``); best wall time of ``repeats``, alternating,
    transformers at each of ``torch_threads`` torch threads."""
    import jax
    import numpy as np
    import torch
    import transformers

    from generate_vs_hf import MODEL, mixed_prompts, timed
    from jaxalign.generation import SamplingConfig, generate
    from jaxalign.models import load_pretrained

    batch, new_tokens = spec["batch"], spec["new_tokens"]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(spec["ckpt"], dtype=torch.float32).eval()
    model = load_pretrained(spec["ckpt"])
    ids, mask = mixed_prompts(batch, 16, 64, MODEL["vocab_size"])
    torch_ids, torch_mask = torch.tensor(ids), torch.tensor(mask)
    jax_ids, jax_mask = jax.device_put(ids.astype(np.int32)), jax.device_put(mask.astype(np.int32))
    sampling = SamplingConfig(max_new_tokens=new_tokens, stop_at_eos=False, temperature=1.0, top_k=50)

    def run_hf() -> Any:
        with torch.inference_mode():
            return hf_model.generate(input_ids=torch_ids, attention_mask=torch_mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=True, top_k=50, pad_token_id=0,
                                     eos_token_id=None)

    def run_jax() -> Any:
        return generate(model, jax_ids, jax_mask, jax.random.key(0), sampling).tokens.block_until_ready()

    load_before = os.getloadavg()[0]
    compile_and_run = timed(run_jax)[0]
    timed(run_hf)  # warm-up
    # transformers is credited with its fastest torch thread count, as in generate_vs_hf.py
    # (OpenMP threads spin-wait and slow down badly when other jobs share the cores).
    best = {"jaxalign": float("inf"), "hf": float("inf")}
    for _ in range(spec["repeats"]):
        for threads in spec["torch_threads"]:
            torch.set_num_threads(threads)
            seconds = timed(run_hf)[0]
            if seconds < best["hf"]:
                best["hf"], best["hf_threads"] = seconds, threads
        best["jaxalign"] = min(best["jaxalign"], timed(run_jax)[0])
    return {"kind": "generate", "batch": batch, "new_tokens": new_tokens, "jaxalign_s": best["jaxalign"],
            "hf_s": best["hf"], "hf_torch_threads": best["hf_threads"], "jaxalign_compile_s": compile_and_run - best["jaxalign"],
            "repeats": spec["repeats"], "load_average": [load_before, os.getloadavg()[0]]}


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", help="JSON spec of a training point")
    group.add_argument("--generate", help="JSON spec of a generation point")
    args = parser.parse_args()
    common.quiet_libraries()
    result = train_point(json.loads(args.train)) if args.train else generate_point(json.loads(args.generate))
    print("SCALING_POINT " + json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main()
