"""PPO iteration time and its split: generation, scoring, the rollout's teacher-forced
pass (old/reference log-probs, values, advantages) and training, with tokens/s.

Runs ``jaxalign.trainer.Trainer``'s own loop body (``_optimizer_step``: rollout
hook + jitted update) on the built-in prompts with the shipped Python reward
(or ``--reward-model DIR``), a random Llama of the chosen size, after
``--warmup`` iterations (compiles), and reports per-iteration medians.

Usage::

    python benchmarks/ppo_iteration.py [--hidden 128 --layers 2 --batch 32 --new 24 --iterations 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import side_by_side  # noqa: E402

PHASES = ("generation", "scoring", "logps", "training")


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=24, help="ppo.max_new_tokens")
    parser.add_argument("--epochs", type=int, default=4, help="ppo.num_ppo_epochs")
    parser.add_argument("--minibatches", type=int, default=2, help="ppo.num_mini_batches")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--reward-model", default=None, help="a reward-model folder instead of the Python reward")
    args = parser.parse_args()
    common.quiet_libraries()

    import jax

    from jaxalign.trainer import _MetricsWindow

    reward = ({"reward_model": args.reward_model} if args.reward_model
              else {"reward_function": "jaxalign.rewards_builtin:helpful_harmless"})
    with tempfile.TemporaryDirectory() as run_dir:
        config = {
            "algo": "ppo", "run_dir": run_dir, "max_steps": args.warmup + args.iterations, "export": False,
            "model": {"tokenizer": "builtin", "config": {
                "model_type": "llama", "hidden_size": args.hidden, "intermediate_size": 3 * args.hidden,
                "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 256, "tie_word_embeddings": True}},
            "data": {"train": "builtin:preferences", "batch_size": args.batch, "max_length": 128,
                     "max_prompt_length": 64, "pad_to_multiple": 16, "num_epochs": 10},
            "ppo": {**reward, "max_new_tokens": args.new, "temperature": 1.0, "num_ppo_epochs": args.epochs,
                    "num_mini_batches": args.minibatches},
            "optim": {"lr": 1e-4, "schedule": "constant"},
            "checkpoint": {"every_steps": 10_000, "every_minutes": 0},
            "log": {"tensorboard": False},
        }
        trainer = side_by_side.jaxalign_trainer(config)
        iterator = trainer.train_data.iterator()
        rows = []
        for index in range(args.warmup + args.iterations):
            window = _MetricsWindow()
            started = time.perf_counter()
            trainer._optimizer_step(iterator, window)
            jax.block_until_ready(trainer.state)
            wall = time.perf_counter() - started
            if index >= args.warmup:
                metrics = window.read()
                rows.append({**{phase: metrics.get(f"time/{phase}_s", 0.0) for phase in PHASES}, "wall": wall,
                             "generated": metrics["tokens/generation"], "trained": metrics["tokens/training"]})
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    table = [[phase, median[phase], 100 * median[phase] / median["wall"]] for phase in PHASES]
    table.append(["iteration (wall)", median["wall"], 100.0])
    title = (f"PPO iteration, Llama hidden {args.hidden} x {args.layers} layers, {args.batch} prompts, "
             f"{args.new} new tokens, {args.epochs} epochs x {args.minibatches} minibatches "
             f"(median of {args.iterations}, after {args.warmup} warm-up), {jax.devices()[0].platform}")
    common.print_table(title, ["phase", "seconds", "% of iteration"], table)
    rates = {"generation_tokens_per_s": median["generated"] / median["generation"],
             "training_tokens_per_s": median["trained"] / median["training"]}
    print(f"generation {rates['generation_tokens_per_s']:.0f} tokens/s, "
          f"training {rates['training_tokens_per_s']:.0f} tokens/s (prompt + reply tokens x epochs)")
    common.emit_json("ppo_iteration", {"config": vars(args), "median_seconds": median, **rates,
                                       "device": str(jax.devices()[0].platform), "machine": common.machine()})


if __name__ == "__main__":
    main()
