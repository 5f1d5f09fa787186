"""Diagnostic: where jaxalign's reward-model and DPO train steps spend their work,
on the HH-RLHF workload of ``rm_vs_trl.py`` / ``dpo_vs_trl.py --workload hh``.

For the first batch of the (unshuffled) data it prints, for the RM and DPO
train steps built by ``jaxalign.trainer.Trainer``:

* XLA's own cost analysis of the compiled step (FLOPs, bytes accessed) with the
  default block-sparse (tiled) attention, with the dense ``[L, L]`` mask (the
  batch without ``tile_pairs``), and with attention replaced by ``v`` (the step
  minus attention and the q/k projections; monkeypatched here, never in the
  library), and their step times, alternated over ``--rounds`` rounds (best of);
* the density of the packed attention mask (share of the ``[L, L]`` score
  matrix a real token may attend to) and the share of 64 x 64 tiles the tiled
  attention computes, over ``--batches`` batches;
* over one epoch, per algorithm: distinct batch shapes ``(R, L, C, P)`` (each
  compiles the train step) against distinct ``(R, L)``, and the vocab
  projection's positions (``R * C``) against completion tokens.

Usage::

    python benchmarks/step_breakdown.py [--rounds 3] [--batches 40] [--max-length 512] [--algos rm dpo]
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


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=512, help="data.max_length (pairs that fit are kept)")
    parser.add_argument("--algos", nargs="+", default=["rm", "dpo"], choices=["rm", "dpo"])
    args = parser.parse_args()
    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    common.quiet_libraries()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxalign.models.attention as attention
    from jaxalign.batch import ATTENTION_TILE, attention_mask
    from jaxalign.sharding import shard_batch

    tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
    pairs, _ = common.hh_pairs(paths[common.HH_FILE], tokenizer, args.max_length)
    model_config = dict(vocab_size=len(tokenizer), hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=8, intermediate_size=1376, max_position_embeddings=max(1024, 2 * args.max_length),
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-breakdown-") as tmp:
        tmp = Path(tmp)
        common.build_llama(tmp / "rm", head="score", **model_config)
        common.build_llama(tmp / "lm", head="causal_lm", **model_config)
        data = common.write_jsonl(tmp / "pairs.jsonl", pairs)
        trainers = {
            algo: side_by_side.jaxalign_trainer({
                "algo": algo, "run_dir": str(tmp / f"run-{algo}"), "max_steps": 10, "export": False,
                "model": {"path": str(tmp / ("rm" if algo == "rm" else "lm")),
                          "tokenizer": str(paths[common.GPT2_TOKENIZER])},
                "data": {"train": str(data), "batch_size": 8, "max_length": args.max_length,
                         "max_prompt_length": args.max_length - 1,
                         "shuffle": False},
                "checkpoint": {"every_steps": 0, "every_minutes": 0},
                "log": {"every_steps": 10 ** 6, "tensorboard": False},
            })
            for algo in args.algos
        }
        host_batches = {algo: next(trainer.train_data.iterator()) for algo, trainer in trainers.items()}
        census = common.batch_census(host_batches[args.algos[-1]])
        print(f"first batch: {census['pairs']} pairs, R x L = {census['rows']} x {census['length']}, "
              f"{census['tokens']} real tokens, {census['completion_tokens']} completion tokens, "
              f"{census['tile_pairs']} attention tile pairs a row")

        original_attend = attention.attend

        def without_tiles(batch):
            return {key: value for key, value in batch.items() if key != "tile_pairs"}

        # (name, batch transform, attention replacement or None)
        variants = [
            ("tiled attention (default)", lambda batch: batch, None),
            ("dense [L, L] mask", without_tiles, None),
            ("attention removed (out = v)", lambda batch: batch, lambda q, k, v, layout, scale: v),
        ]
        compiled, rows = {}, []
        for algo, trainer in trainers.items():
            for name, transform, replacement in variants:
                batch = shard_batch(transform(host_batches[algo]), trainer.mesh)
                if replacement is not None:
                    attention.attend = replacement
                try:  # a fresh function object, so jax traces again instead of reusing the cached trace
                    step = jax.jit(lambda s, b, f, _step=trainer.algo.train_step: _step(s, b, f))
                    exe = step.lower(trainer.state, batch, trainer.algo.frozen).compile()
                finally:
                    attention.attend = original_attend
                cost = exe.cost_analysis()
                cost = cost[0] if isinstance(cost, list) else cost
                compiled[(algo, name)] = (exe, batch)
                rows.append([algo, name, cost["flops"] / 1e9, cost["bytes accessed"] / 1e9])
        times = {key: [] for key in compiled}
        for _ in range(args.rounds):
            for (algo, name), (exe, batch) in compiled.items():
                trainer = trainers[algo]
                start = time.perf_counter()
                trainer.state, _ = exe(trainer.state, batch, trainer.algo.frozen)
                jax.block_until_ready(trainer.state)
                times[(algo, name)].append(time.perf_counter() - start)
        for row in rows:
            row += [min(times[(row[0], row[1])]), " ".join(f"{t:.1f}" for t in times[(row[0], row[1])])]
        common.print_table("train step on the first batch (XLA cost analysis; times best of rounds, alternated)",
                           ["algo", "variant", "XLA GFLOP", "XLA GB accessed", "best s", "all s"], rows)

        densities, tiles = [], []
        for _, batch in zip(range(args.batches), trainers[args.algos[0]].train_data.iterator()):
            mask = np.asarray(attention_mask(jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["branch_ids"])))
            mask = mask & (batch["segment_ids"] != 0)[:, :, None]
            r, length, _ = mask.shape
            densities.append(mask.mean())
            if "tile_pairs" in batch:
                tiles.append((batch["tile_pairs"][..., 0] >= 0).sum() / (r * (length // ATTENTION_TILE) ** 2))
        print(f"\npacked attention mask over {len(densities)} batches: {np.mean(densities):.3f} of the [L, L] "
              f"scores are visible (min {np.min(densities):.3f}, max {np.max(densities):.3f}); tiled attention "
              f"computes {np.mean(tiles):.3f} of the {ATTENTION_TILE}x{ATTENTION_TILE} tiles")

        for algo, trainer in trainers.items():
            shapes, row_shapes, slots, completions, batches = set(), set(), 0, 0, 0
            for batch in trainer.train_data.iterator():
                c = common.batch_census(batch)
                shapes.add((c["rows"], c["length"], c["target_slots"], c["tile_pairs"]))
                row_shapes.add((c["rows"], c["length"]))
                slots += c["lm_head_slots"]
                completions += c["completion_tokens"]
                batches += 1
            print(f"{algo}, one epoch: {batches} batches, {len(shapes)} distinct (R, L, C, P) = train-step compiles, "
                  f"{len(row_shapes)} distinct (R, L)")
            if completions:
                print(f"{algo}: vocab projection positions R*C over the epoch: {slots} for {completions} completion "
                      f"tokens ({slots / completions:.2f}x)")
        print(f"matmul probe: jax {common.matmul_rate() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
