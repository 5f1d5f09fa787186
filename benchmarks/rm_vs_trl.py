"""Benchmark: one reward-model training step, jaxalign vs TRL's ``RewardTrainer``.

Same model, data, batch and precision on both sides:

* model: a random-init ``LlamaForSequenceClassification`` (num_labels=1; by
  default hidden 512, 8 layers, 8 heads, MLP 1376, GPT-2 vocabulary 50,257),
  float32, saved once to a temp folder; jaxalign loads it through ``model.path``
  (score head), TRL through ``AutoModelForSequenceClassification``;
* data: HH-RLHF helpful-base test pairs (``tests/data/real``), GPT-2 tokenizer,
  kept in file order on both sides (jaxalign ``data.shuffle: false``, TRL
  ``train_sampling_strategy="sequential"``), so step i sees the same 8 pairs on
  both. Pairs that would need truncation at ``--max-length`` are dropped before
  either side sees them (TRL's RewardTrainer drops them too; jaxalign would
  truncate), so both process identical tokens;
* optimizer: AdamW, same lr, grad-norm clip 1.0, no weight decay; TRL with
  ``bf16=False`` and ``gradient_checkpointing=False`` (TRL's defaults turn both
  on; jaxalign runs float32 without remat here).

jaxalign is driven through ``jaxalign.trainer.Trainer`` (the path ``jaxalign
train`` takes), one ``_optimizer_step`` at a time, blocking after each;
TRL through its own ``train()``. Each side runs in its own process and they take
turns step by step; ``side_processes`` has the how and why, and how compile time
is separated. ``--trl-malloc glibc`` starts TRL's process with glibc's malloc
defaults (as a plain ``python`` process gets them) instead of the settings the
``jaxalign`` command starts with.

Usage::

    python benchmarks/rm_vs_trl.py [--warmup 1] [--steps 4] [--pairs 8] [--max-length 512] [--trl-malloc same|glibc]
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


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side (after compiling)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side")
    parser.add_argument("--pairs", type=int, default=8, help="preference pairs per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--pack-length", type=int, help="jaxalign data.pack_length (default: its own, 2 * max_length)")
    side_processes.add_trl_malloc_option(parser)
    args = parser.parse_args()

    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    common.quiet_libraries()
    import trl

    tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
    pairs, dropped = common.hh_pairs(paths[common.HH_FILE], tokenizer, args.max_length)
    implicit_rows = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]} for p in pairs]
    model_config = dict(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, intermediate_size=args.intermediate,
        max_position_embeddings=max(1024, args.max_length), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    params = common.llama_params(model_config)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-rm-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "reward-model"
        common.build_llama(ckpt, head="score", seed=0, **model_config)
        data_file = common.write_jsonl(tmp / "hh_pairs.jsonl", implicit_rows)

        probe_start = common.probe_rates()

        result = side_processes.run_in_side_processes(
            {"workload": "rm", "tmp": str(tmp), "ckpt": str(ckpt), "pairs": args.pairs, "max_length": args.max_length,
             "lr": args.lr, "warmup": args.warmup, "steps": args.steps, "pack_length": args.pack_length,
             "data": str(data_file), "tokenizer": str(paths[common.GPT2_TOKENIZER]), "trl_rows": str(data_file),
             "trl_tokenizer": str(paths[common.GPT2_TOKENIZER]), "epoch_shapes": True}, args.trl_malloc)
        if result["trl_train_rows"] != len(pairs):
            print(f"note: TRL kept {result['trl_train_rows']} of {len(pairs)} pairs (max_length filter)")
        probe_end = common.probe_rates()
        rates = common.best_rates(probe_start, probe_end)

    machine = common.machine()
    headline = [
        f"reward-model step, jaxalign vs TRL {trl.__version__} RewardTrainer; {machine['cpu']}, "
        f"{machine['cores']} cores, load average {machine['load_average_at_start']:.1f} at the start; "
        f"{machine['date']}",
        f"model: random-init LlamaForSequenceClassification (1 label), hidden {args.hidden}, {args.layers} layers, "
        f"{args.heads} heads, MLP {args.intermediate}, vocab {len(tokenizer)}: {params['non_embedding'] / 1e6:.2f}M "
        f"non-embedding + {params['embedding'] / 1e6:.2f}M embedding params, float32, no remat / no grad checkpointing",
        f"data: HH-RLHF helpful-base test, {dropped['kept']} of {dropped['rows']} pairs kept "
        f"({dropped['dropped_too_long']} would need truncation at max_length {args.max_length}, "
        f"{dropped['dropped_degenerate']} degenerate); {args.pairs} pairs/step; same pairs in the same order on both",
        f"timed: {args.steps} steps per side after {args.warmup} warm-up step(s), jaxalign and TRL steps alternating, "
        f"each side in its own process (TRL's malloc: {args.trl_malloc})",
        "useful FLOPs = 6 * non-embedding params * real tokens (prompt once per pair); attention T^2 terms excluded",
    ]
    print("\n" + "\n".join(headline))
    side_by_side.report_side_by_side(
        "rm_vs_trl", headline, result, args.warmup,
        lambda census: common.useful_flops(params["non_embedding"], args.hidden, 0, census["tokens"], 0,
                                           reference=False, lm_head=False),
        rates, target=1.5,
        extra={"args": vars(args), "trl_malloc": args.trl_malloc, "params": params, "data": dropped})
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
