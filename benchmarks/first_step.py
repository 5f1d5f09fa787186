"""Benchmark: time to the first DPO step on HH-RLHF, cold compilation cache vs warm.

Runs ``jaxalign train`` twice in fresh processes on the same config (the HH
workload of ``dpo_vs_trl.py``: random-init Llama hidden 512, 8 layers, GPT-2
vocabulary, 8 pairs/step, max_length 512), with ``max_steps`` steps, the
persistent compilation cache in a new empty folder. The first run compiles and
fills the cache; the second loads from it. Reports for each run the seconds from
launch to the trainer's ``start`` event (imports, data, model and state), to the
first step's metrics line, and to exit, and the ``perf/*`` metrics of step 1,
then, with ``--epoch``, the distinct batch shapes of one epoch and the share of
real tokens in the decoder and projection slots, with and without the ladder.

Usage::

    python benchmarks/first_step.py [--model hh|tiny] [--steps 1] [--epoch]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MODELS = {
    # dpo_vs_trl.py --workload hh's model: a step takes seconds, more than the compile under load.
    "hh": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
               intermediate_size=1376, max_position_embeddings=1024, tie_word_embeddings=False),
    # A tiny model on the same data: start-up is setup + compiles, what the cache is for.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128, max_position_embeddings=1024, tie_word_embeddings=False),
}


def run_once(config_path: Path, env: dict) -> dict:
    """One ``jaxalign train`` process: seconds from launch to the trainer's ``start`` event
    (imports, data, model, state), to the first step's metrics line, and to exit."""
    launched, start = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaxalign.cli", "train", str(config_path)], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"jaxalign train failed:\n{done.stderr[-3000:]}")
    run_dir = Path(json.loads(config_path.read_text())["run_dir"])
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(event["time"] for event in events if event["kind"] == "start")
    first = next(line["time"] for line in lines if line["step"] == 1)
    perf = {k: v for line in lines if line["step"] == 1 for k, v in line.items() if "perf/" in k}
    return {"setup_seconds": round(started - launched, 1), "first_step_seconds": round(first - launched, 1),
            "exit_seconds": round(seconds, 1), **perf}


def epoch_fill(data_spec: str, tokenizer, max_shapes: int) -> dict:
    from collections import Counter

    from jaxalign.data import DataConfig, build_pipeline
    from jaxalign.data.packing import batch_shape

    cfg = DataConfig(train=data_spec, batch_size=8, max_length=512, max_prompt_length=511, max_shapes=max_shapes)
    start = time.perf_counter()
    pipeline = build_pipeline(cfg, tokenizer, kind="preference")
    build = time.perf_counter() - start
    shapes, tokens, slots, targets, target_slots = Counter(), 0, 0, 0, 0
    for batch in pipeline.iterator():
        shapes[batch_shape(batch)] += 1
        tokens += int((batch["segment_ids"] > 0).sum())
        slots += batch["segment_ids"].size
        targets += int((batch["target_segment"] > 0).sum())
        target_slots += batch["target_segment"].size
    return {"max_shapes": max_shapes, "distinct_shapes": len(shapes), "decoder_fill": round(tokens / slots, 4),
            "projection_fill": round(targets / target_slots, 4), "build_seconds": round(build, 2)}


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--model", choices=sorted(MODELS), default="hh")
    parser.add_argument("--epoch", action="store_true", help="also count an epoch's shapes and padding")
    args = parser.parse_args()
    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    common.quiet_libraries()
    tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-first-step-") as tmp:
        tmp = Path(tmp)
        rows, _ = common.hh_pairs(paths[common.HH_FILE], tokenizer, 512)
        data_spec = str(common.write_jsonl(tmp / "hh_pairs.jsonl", rows))
        common.build_llama(tmp / "policy", head="causal_lm", vocab_size=len(tokenizer), pad_token_id=50256,
                           bos_token_id=50256, eos_token_id=50256, **MODELS[args.model])
        env = {**os.environ, "JAXALIGN_CACHE_DIR": str(tmp / "cache"), "JAX_PLATFORMS": "cpu"}
        results = []
        for attempt in ("cold", "warm"):
            config = {
                "algo": "dpo", "run_dir": str(tmp / f"run-{attempt}"), "max_steps": args.steps, "export": False,
                "model": {"path": str(tmp / "policy"), "tokenizer": str(paths[common.GPT2_TOKENIZER])},
                "data": {"train": data_spec, "batch_size": 8, "max_length": 512, "max_prompt_length": 511},
                "loss": {"name": "sigmoid", "beta": 0.1},
                "checkpoint": {"every_steps": 0, "every_minutes": 0},
                "log": {"every_steps": 1, "tensorboard": False},
            }
            path = tmp / f"{attempt}.yaml"
            path.write_text(json.dumps(config))
            results.append({"cache": attempt, **run_once(path, env)})
            print(results[-1], flush=True)
        cold, warm = results
        print(f"warm run: first step {cold['first_step_seconds'] / warm['first_step_seconds']:.2f}x sooner; "
              f"from the trainer's start to the first step "
              f"{(cold['first_step_seconds'] - cold['setup_seconds']) / (warm['first_step_seconds'] - warm['setup_seconds']):.2f}x")
        fills = [epoch_fill(data_spec, tokenizer, m) for m in (0, 8)] if args.epoch else []
        for fill in fills:
            print(fill)
    common.emit_json("first_step", {"machine": common.machine(), "model": args.model, "runs": results, "epoch": fills,
                                    "load": os.getloadavg()})


if __name__ == "__main__":
    main()
