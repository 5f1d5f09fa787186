"""jaxalign and TRL trainers built the same way, TRL's loop with the other side's step between
its steps, and the side-by-side report (the reward-model, DPO and scaling benchmarks share
them; ``side_processes`` runs each side in its own process; the data, model, timing and
report pieces they stand on are in ``common``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from common import (RecordingCollator, batch_census, cpu_model, dot_library, emit_json, machine,
                    make_interleaved_timer, print_table, stats)


def jaxalign_trainer(config: dict):
    """``jaxalign.trainer.Trainer`` from a config dict (the same path as ``jaxalign train``)."""
    from jaxalign import configlib
    from jaxalign.config import TrainConfig
    from jaxalign.trainer import Trainer

    return Trainer(configlib.from_dict(TrainConfig, config))


def _jaxalign_config(algo: str, run_dir: Path, ckpt: Path, tokenizer: str, data: str, pairs: int,
                     max_length: int, lr: float, steps: int, pack_length: int | None) -> dict:
    return {
        "algo": algo, "run_dir": str(run_dir), "max_steps": steps, "export": False,
        "model": {"path": str(ckpt), "tokenizer": tokenizer},
        "data": {"train": data, "batch_size": pairs, "max_length": max_length, "max_prompt_length": max_length - 1,
                 "shuffle": False, **({"pack_length": pack_length} if pack_length else {})},
        "optim": {"lr": lr, "schedule": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0},
        "checkpoint": {"every_steps": 0, "every_minutes": 0},
        "log": {"every_steps": 10 ** 6, "tensorboard": False},
    }


def jaxalign_rm_trainer(run_dir: Path, ckpt: Path, tokenizer: str, data: str, pairs: int, max_length: int,
                        lr: float, steps: int, pack_length: int | None = None):
    """jaxalign's reward-model trainer as the RM benchmarks run it: data in file order,
    AdamW with a linear schedule, clip 1.0, no weight decay, no checkpoints or logs."""
    return jaxalign_trainer(_jaxalign_config("rm", run_dir, ckpt, tokenizer, data, pairs, max_length, lr, steps,
                                             pack_length))


def jaxalign_dpo_trainer(run_dir: Path, ckpt: Path, tokenizer: str, data: str, pairs: int, max_length: int,
                         lr: float, steps: int, pack_length: int | None = None):
    """jaxalign's DPO trainer as the DPO benchmarks run it (sigmoid loss, beta 0.1,
    reference log-probs computed in the step; otherwise as ``jaxalign_rm_trainer``)."""
    config = _jaxalign_config("dpo", run_dir, ckpt, tokenizer, data, pairs, max_length, lr, steps, pack_length)
    return jaxalign_trainer({**config, "loss": {"name": "sigmoid", "beta": 0.1}})


def _trl_args(output_dir: Path, pairs: int, max_length: int, lr: float, steps: int) -> dict:
    """TRL arguments matching jaxalign's run: float32 (``bf16=False``), no gradient
    checkpointing (TRL's defaults turn both on), sequential sampling."""
    return dict(
        output_dir=str(output_dir), max_length=max_length, per_device_train_batch_size=pairs,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=lr, lr_scheduler_type="linear",
        weight_decay=0.0, max_grad_norm=1.0, report_to=[], save_strategy="no", eval_strategy="no",
        logging_steps=10 ** 6, dataloader_num_workers=0, use_cpu=True, bf16=False, gradient_checkpointing=False,
        train_sampling_strategy="sequential", disable_tqdm=True, seed=0,
    )


def trl_rm_trainer(output_dir: Path, ckpt: Path, rows: list[dict], tokenizer, pairs: int, max_length: int,
                   lr: float, steps: int):
    """TRL's ``RewardTrainer`` on implicit-prompt ``{"chosen", "rejected"}`` rows."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1, dtype=torch.float32)
    return RewardTrainer(model=model, args=RewardConfig(**_trl_args(output_dir, pairs, max_length, lr, steps)),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def trl_dpo_trainer(output_dir: Path, ckpt: Path, rows: list[dict], tokenizer, pairs: int, max_length: int,
                    lr: float, steps: int):
    """TRL's ``DPOTrainer`` on explicit prompt/chosen/rejected rows: sigmoid loss, beta
    0.1, an explicit float32 reference model run in every step (no precomputing)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(**_trl_args(output_dir, pairs, max_length, lr, steps), beta=0.1, loss_type=["sigmoid"],
                       precompute_ref_log_probs=False)
    policy = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    return DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)


def run_trl_interleaved(trl_trainer, between_steps: Callable[[], Any], total: int) -> dict:
    """Runs TRL's own ``train()`` for ``total`` steps, timing each, with
    ``between_steps()`` run after each TRL step outside its timing (the other
    side's step). Returns ``trl_seconds``, ``trl_faults`` (minor page faults per step) and
    ``trl_census`` (``RecordingCollator``)."""
    trl_census: list[dict] = []
    trl_trainer.data_collator = RecordingCollator(trl_trainer.data_collator, trl_census)
    timer = make_interleaved_timer(between_steps)
    trl_trainer.add_callback(timer)
    trl_trainer.train()
    if len(timer.step_seconds) != total:
        raise RuntimeError(f"expected {total} TRL steps, got {len(timer.step_seconds)}")
    return {"trl_seconds": timer.step_seconds, "trl_faults": timer.step_faults, "trl_census": trl_census[:total]}


def epoch_shapes(pipeline) -> dict:
    """Host-only pass over a whole epoch of a jaxalign pipeline: how many distinct
    ``(R, L, C, P)`` batch shapes (= compiles of the train step) it produces."""
    from collections import Counter

    shapes: Counter = Counter()
    tokens = slots = 0
    start = time.perf_counter()
    for batch in pipeline.iterator():
        census = batch_census(batch)
        shapes[(census["rows"], census["length"], census["target_slots"], census["tile_pairs"])] += 1
        tokens += census["tokens"]
        slots += census["slots"]
    return {"batches": sum(shapes.values()), "distinct_shapes": len(shapes),
            "distinct_row_shapes": len({shape[:2] for shape in shapes}),
            "fill": tokens / max(slots, 1), "host_seconds": time.perf_counter() - start,
            "most_common": [[list(k), v] for k, v in shapes.most_common(5)]}


def report_side_by_side(name: str, headline: Sequence[str], result: dict, warmup: int,
                        flops_of: Callable[[dict], float], rates: dict[str, float],
                        target: float, extra: dict, completions: bool = False) -> dict:
    """Prints the per-step table, the summary and a ``BENCHMARK_JSON`` line; returns the summary.

    ``result``: ``side_processes.run_in_side_processes``'s, with jaxalign's epoch census.
    ``flops_of(census)`` gives the useful FLOPs of one jaxalign batch; the same
    count is used for TRL's step on the same pairs (same information, so the
    shares of the matmul probe compare like with like). ``rates``: the best
    matmul probe per library (``best_rates``)."""
    jax_rate, torch_rate = rates["jax"], rates["torch"]
    setup, epoch = result["setup_seconds"], result["epoch"]
    jax_records, trl_seconds, trl_census = result["jaxalign"], result["trl_seconds"], result["trl_census"]
    trl_faults = result["trl_faults"]
    rows = []
    for i, (j, t, c, f) in enumerate(zip(jax_records, trl_seconds, trl_census, trl_faults)):
        row = [f"{i}{' warm-up' if i < warmup else ''}", j["pairs"], c["slots"], c["tokens"]]
        if completions:
            row += [c.get("completion_tokens", "-")]
        row += [j["slots"], j["tokens"]]
        if completions:
            row += [j["completion_tokens"], j["lm_head_slots"]]
        shape = f"{j['rows']}x{j['length']}" + (f"/{j['target_slots']}" if completions else "")
        row += [shape, t, j["run_seconds"], f"{j['compile_seconds']:.1f}" if j["compiled"] else "-",
                f"{f / 1e3:.0f}k", f"{j['minor_faults'] / 1e3:.0f}k", t / j["run_seconds"]]
        rows.append(row)
    header = ["step", "pairs", "TRL slots", "TRL tokens"] + (["TRL compl"] if completions else []) + \
             ["jxa slots", "jxa tokens"] + (["jxa compl", "jxa lm-head slots"] if completions else []) + \
             ["jxa RxL" + ("/C" if completions else ""), "TRL s", "jxa s", "jxa compile s", "TRL faults",
              "jxa faults", "TRL/jxa"]
    print_table("per step (slots: token positions pushed through the decoder; tokens: non-padding ones; "
                "faults: minor page faults, memory touched for the first time"
                + ("; compl: completion tokens; lm-head slots: positions the vocab projection runs on" if completions
                   else "") + ")", header, rows)

    timed_jax, timed_trl, timed_census = jax_records[warmup:], trl_seconds[warmup:], trl_census[warmup:]
    jax_s = sum(r["run_seconds"] for r in timed_jax)
    trl_s = sum(timed_trl)
    pairs = sum(r["pairs"] for r in timed_jax)
    flops = sum(flops_of(r) for r in timed_jax)
    n = len(timed_jax)
    compile_s = [r["compile_seconds"] for r in jax_records if r["compiled"]]
    summary = {
        "jaxalign_s_per_step": jax_s / n, "trl_s_per_step": trl_s / n,
        "jaxalign_s_per_step_median": stats([r["run_seconds"] for r in timed_jax])["median"],
        "trl_s_per_step_median": stats(timed_trl)["median"],
        "speedup": trl_s / jax_s, "speedup_median_of_step_ratios": stats(
            [t / j["run_seconds"] for t, j in zip(timed_trl, timed_jax)])["median"],
        "jaxalign_pairs_per_s": pairs / jax_s, "trl_pairs_per_s": pairs / trl_s,
        "jaxalign_slots_per_step": sum(r["slots"] for r in timed_jax) / n,
        "trl_slots_per_step": sum(c["slots"] for c in timed_census) / n,
        "jaxalign_tokens_per_step": sum(r["tokens"] for r in timed_jax) / n,
        "trl_tokens_per_step": sum(c["tokens"] for c in timed_census) / n,
        "useful_gflop_per_step": flops / n / 1e9,
        "jaxalign_useful_share_of_matmul_rate": flops / jax_s / jax_rate,
        "trl_useful_share_of_matmul_rate": flops / trl_s / torch_rate,
        "matmul_gflops_jax": jax_rate / 1e9, "matmul_gflops_torch": torch_rate / 1e9,
        "compiles": len(compile_s), "compile_seconds": compile_s,
        "fetch_seconds_max": max(r["fetch_seconds"] for r in jax_records),
        "timed_steps": n, "warmup_steps": warmup,
        "jaxalign_minor_faults": [r["minor_faults"] for r in jax_records], "trl_minor_faults": list(trl_faults),
    }
    # A step that met a new shape also pays first-run costs beyond the compile
    # seconds jax reports; the same step indices on both sides, without them.
    steady = [(t, j["run_seconds"]) for t, j in zip(timed_trl, timed_jax) if not j["compiled"]]
    summary["steady_steps"] = len(steady)
    summary["speedup_steady"] = sum(t for t, _ in steady) / sum(j for _, j in steady) if steady else float("nan")
    if completions:
        summary["completion_tokens_per_step"] = sum(r["completion_tokens"] for r in timed_jax) / n
        summary["jaxalign_lm_head_slots_per_step"] = sum(r["lm_head_slots"] for r in timed_jax) / n
    summary_rows = [
        ["seconds / step (mean over timed steps)", summary["jaxalign_s_per_step"], summary["trl_s_per_step"]],
        ["seconds / step (median)", summary["jaxalign_s_per_step_median"], summary["trl_s_per_step_median"]],
        ["pairs / s", summary["jaxalign_pairs_per_s"], summary["trl_pairs_per_s"]],
        ["token slots through the decoder / step", summary["jaxalign_slots_per_step"], summary["trl_slots_per_step"]],
        ["real tokens / step (jaxalign: prompt once)", summary["jaxalign_tokens_per_step"],
         summary["trl_tokens_per_step"]],
        ["real tokens / slots", summary["jaxalign_tokens_per_step"] / summary["jaxalign_slots_per_step"],
         summary["trl_tokens_per_step"] / summary["trl_slots_per_step"]],
    ]
    if completions:
        trl_compl = sum(c.get("completion_tokens", 0) for c in timed_census) / n
        summary_rows.append(["completion tokens / step (vocab projection)",
                             summary["completion_tokens_per_step"], trl_compl])
        summary_rows.append(["  positions the vocab projection runs on", summary["jaxalign_lm_head_slots_per_step"],
                             trl_compl])
    summary_rows += [
        ["useful GFLOP / step (same count both sides)", summary["useful_gflop_per_step"],
         summary["useful_gflop_per_step"]],
        ["useful GFLOP/s", flops / jax_s / 1e9, flops / trl_s / 1e9],
        ["  share of the matmul probe (jax / torch)", summary["jaxalign_useful_share_of_matmul_rate"],
         summary["trl_useful_share_of_matmul_rate"]],
        ["setup s (model, data, trainer)", setup["jaxalign"], setup["trl"]],
        ["peak RSS GB (each side's own process)", result["peak_rss_mb"]["jaxalign"] / 1024,
         result["peak_rss_mb"]["trl"] / 1024],
        ["train-step compiles / mean s each", f"{len(compile_s)} / {stats(compile_s)['mean']:.1f}", "-"],
        ["longest wait for a host batch (s)", summary["fetch_seconds_max"], "-"],
        ["minor page faults / step, thousands", sum(r["minor_faults"] for r in timed_jax) / n / 1e3,
         sum(trl_faults[warmup:]) / n / 1e3],
    ]
    print_table(f"summary over {n} timed steps per side (after {warmup} warm-up)", ["", "jaxalign", "TRL"],
                summary_rows)
    print(f"\nspeed-up, TRL time / jaxalign time over the timed steps: {summary['speedup']:.2f}x "
          f"(median of per-step ratios {summary['speedup_median_of_step_ratios']:.2f}x; target >= {target}x): "
          f"{'OK' if summary['speedup'] >= target else 'BELOW TARGET'}")
    print(f"over the {summary['steady_steps']} timed steps that met no new batch shape: "
          f"{summary['speedup_steady']:.2f}x (a step that compiles also pays first-run costs beyond its compile "
          f"seconds)")
    print(f"TRL pushes {summary['trl_slots_per_step'] / summary['jaxalign_slots_per_step']:.2f}x as many token "
          f"positions through the decoder: it pads chosen and rejected to the batch's longest and repeats the prompt "
          f"in both; jaxalign packs [prompt|chosen|rejected] rows, the prompt stored once.")
    print(f"matmul probe (2048^2 float32, best of 7, before and after the run): jax {jax_rate / 1e9:.1f} GFLOP/s "
          f"(dot on {dot_library()}), torch {torch_rate / 1e9:.1f} GFLOP/s; CPU {cpu_model()}")
    for side, label in (("jaxalign", "jaxalign"), ("trl", "TRL")):
        print(f"{label}'s process, host malloc: {result['host_malloc'][side]}")
    print(f"jaxalign batch shapes over one epoch of this data: {epoch['distinct_shapes']} distinct (R, L, C, P) "
          f"({epoch['distinct_row_shapes']} distinct (R, L)) in {epoch['batches']} batches = "
          f"{epoch['distinct_shapes']} train-step compiles per epoch; packed fill {epoch['fill']:.2f}")
    summary["peak_rss_mb"] = result["peak_rss_mb"]
    emit_json(name, {"machine": machine(), **extra, "setup_seconds": setup, "epoch_shapes": epoch,
                     "side_host_malloc": result["host_malloc"], **summary,
                     "headline": list(headline)})
    return summary
