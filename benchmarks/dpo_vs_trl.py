"""Benchmark: one DPO training step, jaxalign vs TRL's ``DPOTrainer``.

The reference model's log-probs are computed inside every step on both sides
(TRL: an explicit ``ref_model`` with ``precompute_ref_log_probs=False``;
jaxalign: its default in-step frozen copy). Sigmoid loss, beta 0.1, AdamW,
float32, no gradient checkpointing on either side (TRL's defaults would turn
on bf16 autocast and gradient checkpointing).

Two workloads (``--workload``):

* ``hh``: HH-RLHF helpful-base test pairs (``tests/data/real``), GPT-2 tokenizer,
  random-init Llama (vocab 50,257, hidden 512, 8 layers, 8 heads, MLP 1376,
  untied head), 8 pairs/step, max_length 512. The implicit-prompt rows are
  split once with jaxalign's implicit-prompt rule and both trainers get the
  same explicit prompt/chosen/rejected rows; pairs that would need truncation
  are dropped first, so both see identical tokens. TRL needs ~tens of seconds a
  step here, so the default is 1 warm-up + 2 timed steps.
* ``builtin``: jaxalign's built-in preference data (``builtin:preferences``,
  train split) and built-in tokenizer (vocab 1,024); TRL gets the same rows
  (``jaxalign.data.builtin.rows``) as a ``datasets.Dataset``; random-init Llama
  hidden 256, 4 layers, 4 heads, MLP 688, 16 pairs/step, max_length 128 (the
  quickstart's data settings).

Both read the data in order (jaxalign ``data.shuffle: false``, TRL
``train_sampling_strategy="sequential"``), so step i sees the same pairs. Each
side runs in its own process and they take turns step by step
(``side_processes``); ``--trl-malloc glibc`` starts TRL's process with glibc's
malloc defaults instead of the settings the ``jaxalign`` command starts with.

Usage::

    python benchmarks/dpo_vs_trl.py --workload hh       [--warmup 1 --steps 2]
    python benchmarks/dpo_vs_trl.py --workload builtin  [--warmup 2 --steps 12]
    (either: [--trl-malloc same|glibc])
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import side_by_side  # noqa: E402
import side_processes  # noqa: E402

WORKLOADS = {
    "hh": dict(pairs=8, max_length=512, hidden=512, layers=8, heads=8, intermediate=1376, warmup=1, steps=2,
               target=3.0, lr=1e-6),
    "builtin": dict(pairs=16, max_length=128, hidden=256, layers=4, heads=4, intermediate=688, warmup=2, steps=12,
                    target=1.5, lr=1e-6),
}


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--warmup", type=int, help="untimed steps per side (default per workload)")
    parser.add_argument("--steps", type=int, help="timed steps per side (default per workload)")
    parser.add_argument("--pack-length", type=int, help="jaxalign data.pack_length (default: its own, 2 * max_length)")
    side_processes.add_trl_malloc_option(parser)
    args = parser.parse_args()
    spec = dict(WORKLOADS[args.workload])
    spec["warmup"] = spec["warmup"] if args.warmup is None else args.warmup
    spec["steps"] = spec["steps"] if args.steps is None else args.steps

    if args.workload == "hh":
        paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    common.quiet_libraries()
    import trl

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-dpo-") as tmp:
        tmp = Path(tmp)
        if args.workload == "hh":
            tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
            rows, data_note = common.hh_pairs(paths[common.HH_FILE], tokenizer, spec["max_length"])
            data_spec = str(common.write_jsonl(tmp / "hh_pairs.jsonl", rows))
            tokenizer_spec = str(paths[common.GPT2_TOKENIZER])
            data_line = (f"data: HH-RLHF helpful-base test, {data_note['kept']} of {data_note['rows']} pairs kept "
                         f"({data_note['dropped_too_long']} would need truncation at max_length "
                         f"{spec['max_length']}, {data_note['dropped_degenerate']} degenerate), GPT-2 tokenizer")
            special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
        else:
            from jaxalign.data import builtin, load_tokenizer

            tokenizer = load_tokenizer("builtin")
            rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in builtin.rows("preferences")]
            data_spec, tokenizer_spec = "builtin:preferences", "builtin"
            data_note = {"kept": len(rows)}
            data_line = f"data: jaxalign builtin:preferences train split ({len(rows)} pairs), built-in tokenizer"
            special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)

        model_config = dict(
            vocab_size=len(tokenizer), hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], num_key_value_heads=spec["heads"],
            intermediate_size=spec["intermediate"], max_position_embeddings=max(256, 2 * spec["max_length"]),
            tie_word_embeddings=False, **special,
        )
        params = common.llama_params(model_config)
        ckpt = tmp / "policy"
        common.build_llama(ckpt, head="causal_lm", seed=0, **model_config)
        probe_start = common.probe_rates()

        result = side_processes.run_in_side_processes(
            {"workload": "dpo", "tmp": str(tmp), "ckpt": str(ckpt), "pairs": spec["pairs"],
             "max_length": spec["max_length"], "lr": spec["lr"], "warmup": spec["warmup"], "steps": spec["steps"],
             "pack_length": args.pack_length, "data": data_spec, "tokenizer": tokenizer_spec,
             "trl_rows": str(common.write_jsonl(tmp / "trl_rows.jsonl", rows)), "trl_tokenizer": tokenizer_spec,
             "epoch_shapes": True}, args.trl_malloc)
        probe_end = common.probe_rates()
        rates = common.best_rates(probe_start, probe_end)

    machine = common.machine()
    headline = [
        f"DPO step ({args.workload}), jaxalign vs TRL {trl.__version__} DPOTrainer, reference computed in the step "
        f"on both sides; {machine['cpu']}, {machine['cores']} cores, load average "
        f"{machine['load_average_at_start']:.1f} at the start; {machine['date']}",
        f"model: random-init LlamaForCausalLM, vocab {len(tokenizer)}, hidden {spec['hidden']}, {spec['layers']} "
        f"layers, {spec['heads']} heads, MLP {spec['intermediate']}, untied head: "
        f"{params['non_embedding'] / 1e6:.2f}M non-embedding + 2 x {params['embedding'] / 1e6:.2f}M "
        f"embedding/head params; float32, no remat / no grad checkpointing",
        data_line + f"; {spec['pairs']} pairs/step, max_length {spec['max_length']}, same pairs in the same order",
        f"timed: {spec['steps']} steps per side after {spec['warmup']} warm-up step(s), jaxalign and TRL alternating, "
        f"each side in its own process (TRL's malloc: {args.trl_malloc})",
        "useful FLOPs = 8 * N * T (policy fwd+bwd 6NT + reference fwd 2NT) + 8 * hidden * vocab * Tc (vocab "
        "projection, policy fwd+bwd + reference fwd); N = non-embedding params, T = real tokens with the prompt "
        "once per pair, Tc = completion tokens; attention T^2 terms excluded",
    ]
    print("\n" + "\n".join(headline))
    side_by_side.report_side_by_side(
        f"dpo_vs_trl_{args.workload}", headline, result, spec["warmup"],
        lambda census: common.useful_flops(params["non_embedding"], spec["hidden"], model_config["vocab_size"],
                                           census["tokens"], census["completion_tokens"], reference=True,
                                           lm_head=True),
        rates, target=spec["target"],
        extra={"workload": args.workload, "spec": spec, "pack_length": args.pack_length,
               "trl_malloc": args.trl_malloc, "params": params,
               "data": data_note},
        completions=True)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
