"""Benchmark: one GRPO step, jaxalign vs TRL's ``GRPOTrainer``, generation and training apart.

Both sides load the same seeded random-init Llama folder (GPT-2 tokenizer, so
the vocabulary projection is realistic), read the same 4 HH-RLHF prompts (the
implicit-prompt split of the first helpful-base test rows short enough that no
prompt is truncated) and score replies with the same Python reward
(``distinct_words`` below). One step = 4 prompts x 4 generations x 64 new tokens
sampled at temperature 1, then one optimizer update on the 16 replies. Matched
settings: ``beta`` 0.04 (a reference forward on both sides), ``loss_type``
``dapo``, ``num_iterations`` 1, ``epsilon`` 0.2, ``scale_rewards`` ``group``,
AdamW, float32, no gradient checkpointing, one optimizer step per generation
batch. A random model almost never samples EOS, so both sides generate all 64
tokens of every reply (the table shows the completion lengths).

Timing: TRL runs its own ``train()``; after each TRL step a callback runs one
jaxalign step (``Trainer._optimizer_step``, the trainer's own loop body), so the
two alternate and see the same machine load. TRL's generation is the time
inside ``_generate_single_turn`` (``model.generate``), its rollout the time in
``_generate_and_score_completions`` (generation, decoding, rewards, reference
log-probs, advantages), its training the rest of the step. jaxalign's phases
come from its own metrics (``time/generation_s``, ``time/rollout_s``,
``time/training_s``). The first ``--warmup`` steps (compiles) are left out.

Usage::

    python benchmarks/grpo_vs_trl.py [--warmup 2 --steps 5 --hidden 256 --layers 4]
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

PROMPTS, GENERATIONS, NEW_TOKENS, MAX_PROMPT_TOKENS = 4, 4, 64, 48
BETA, LOSS_TYPE, NUM_ITERATIONS, EPSILON, LR = 0.04, "dapo", 1, 0.2, 1e-6


def distinct_words(prompts, completions, **kwargs) -> list[float]:
    """The reward both trainers use: distinct whitespace-separated words in the reply, / 10."""
    return [len(set(text.split())) / 10.0 for text in completions]


def hh_prompts(path: Path, tokenizer, count: int, max_tokens: int) -> list[str]:
    """The first ``count`` implicit prompts of the HH-RLHF file with at most ``max_tokens`` tokens."""
    from jaxalign.data import implicit_prompt

    encode = tokenizer.backend_tokenizer.encode
    out = []
    for row in common.read_jsonl_gz(path):
        prompt = implicit_prompt(row["chosen"], row["rejected"])
        if prompt and len(encode(prompt, add_special_tokens=False).ids) <= max_tokens:
            out.append(prompt)
            if len(out) == count:
                return out
    raise SystemExit(f"only {len(out)} HH-RLHF prompts of at most {max_tokens} tokens in {path}")


class PhaseClock:
    """Wraps a bound method of ``owner``; ``seconds`` lists the wall time of each call."""

    def __init__(self, owner, name: str):
        self.seconds: list[float] = []
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)

        setattr(owner, name, timed)


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    paths = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
    common.quiet_libraries()
    import os

    import jax
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from jaxalign.trainer import _MetricsWindow

    load_before = os.getloadavg()
    started = time.perf_counter()
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="jaxalign-bench-grpo-") as tmp:
        tmp = Path(tmp)
        tokenizer = common.gpt2_tokenizer(paths[common.GPT2_TOKENIZER])
        prompts = hh_prompts(paths[common.HH_FILE], tokenizer, PROMPTS, MAX_PROMPT_TOKENS)
        prompt_file = common.write_jsonl(tmp / "prompts.jsonl", [{"prompt": p} for p in prompts])
        model_config = dict(
            vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, num_key_value_heads=args.heads, intermediate_size=int(2.6875 * args.hidden),
            max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        params = common.llama_params(model_config)
        ckpt = tmp / "policy"
        common.build_llama(ckpt, head="causal_lm", seed=0, **model_config)

        setup_start = time.perf_counter()
        jax_trainer = side_by_side.jaxalign_trainer({
            "algo": "grpo", "run_dir": str(tmp / "jaxalign-run"), "max_steps": total, "export": False,
            "eval_batches": 0,
            "model": {"path": str(ckpt), "tokenizer": str(paths[common.GPT2_TOKENIZER])},
            "data": {"train": str(prompt_file), "eval": None, "batch_size": PROMPTS, "shuffle": False,
                     "max_length": MAX_PROMPT_TOKENS + NEW_TOKENS, "max_prompt_length": MAX_PROMPT_TOKENS,
                     "pad_to_multiple": 16, "num_epochs": 1000},
            "grpo": {"reward_funcs": [f"{Path(__file__).resolve()}:distinct_words"],
                     "num_generations": GENERATIONS, "max_completion_length": NEW_TOKENS, "temperature": 1.0,
                     "beta": BETA, "loss_type": LOSS_TYPE, "num_iterations": NUM_ITERATIONS, "epsilon": EPSILON},
            "optim": {"lr": LR, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
                      "max_grad_norm": 1.0},
            "checkpoint": {"every_steps": 0, "every_minutes": 0},
            "log": {"every_steps": 10 ** 6, "tensorboard": False, "completions_every": 0},
        })
        jax_setup = time.perf_counter() - setup_start
        iterator = jax_trainer.train_data.iterator()
        jax_rows: list[dict] = []

        def jaxalign_step() -> None:
            window = _MetricsWindow()
            step_start = time.perf_counter()
            if not jax_trainer._optimizer_step(iterator, window):
                raise RuntimeError("jaxalign: training data ran out")
            jax.block_until_ready(jax_trainer.state)
            wall = time.perf_counter() - step_start
            metrics = window.read()
            jax_rows.append({"step": wall, "generation": metrics["time/generation_s"],
                             "rollout": metrics["time/rollout_s"], "training": metrics["time/training_s"],
                             "length": metrics["completions/mean_length"]})

        setup_start = time.perf_counter()
        trl_args = GRPOConfig(
            output_dir=str(tmp / "trl-run"), per_device_train_batch_size=PROMPTS * GENERATIONS,
            num_generations=GENERATIONS, max_completion_length=NEW_TOKENS, temperature=1.0,
            gradient_accumulation_steps=1, num_iterations=NUM_ITERATIONS, beta=BETA, loss_type=LOSS_TYPE,
            epsilon=EPSILON, max_steps=total, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
            max_grad_norm=1.0, report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10 ** 6,
            dataloader_num_workers=0, use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
            seed=0, model_init_kwargs={"dtype": "float32"}, log_completions=False)
        trl_trainer = GRPOTrainer(model=str(ckpt), reward_funcs=distinct_words, args=trl_args,
                                  train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                                  processing_class=tokenizer)
        trl_setup = time.perf_counter() - setup_start
        trl_generation = PhaseClock(trl_trainer, "_generate_single_turn")
        trl_rollout = PhaseClock(trl_trainer, "_generate_and_score_completions")
        lengths: list[float] = []
        score = trl_trainer._generate_and_score_completions

        def scored(*a, **k):
            out = score(*a, **k)
            lengths.append(float(out["completion_mask"].sum(dim=1).float().mean()))
            return out

        trl_trainer._generate_and_score_completions = scored
        timer = common.make_interleaved_timer(jaxalign_step)
        trl_trainer.add_callback(timer)
        trl_trainer.train()
    if len(jax_rows) != total or len(timer.step_seconds) != total or len(trl_rollout.seconds) != total:
        raise RuntimeError(f"expected {total} steps each, got jaxalign {len(jax_rows)}, TRL {len(timer.step_seconds)} "
                           f"(rollouts {len(trl_rollout.seconds)})")
    trl_rows = [{"step": s, "generation": g, "rollout": r, "training": s - r, "length": n}
                for s, g, r, n in zip(timer.step_seconds, trl_generation.seconds, trl_rollout.seconds, lengths)]
    load_after = os.getloadavg()

    table = [[f"{i}{' warm-up' if i < args.warmup else ''}", t["generation"], t["training"], t["step"],
              j["generation"], j["training"], j["step"], t["step"] / j["step"], t["length"], j["length"]]
             for i, (t, j) in enumerate(zip(trl_rows, jax_rows))]
    machine = common.machine()
    headline = [
        f"GRPO step, jaxalign vs TRL {trl.__version__} GRPOTrainer; {machine['cpu']}, {machine['cores']} cores "
        f"(shared: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after); {machine['date']}",
        f"model: random-init LlamaForCausalLM, GPT-2 tokenizer (vocab {len(tokenizer)}), hidden {args.hidden}, "
        f"{args.layers} layers, {args.heads} heads, untied head: {params['non_embedding'] / 1e6:.2f}M non-embedding "
        f"+ 2 x {params['embedding'] / 1e6:.2f}M embedding/head params; float32",
        f"{PROMPTS} HH-RLHF prompts x {GENERATIONS} generations x {NEW_TOKENS} new tokens, temperature 1; beta {BETA},"
        f" loss_type {LOSS_TYPE}, num_iterations {NUM_ITERATIONS}; one optimizer step per generation batch",
        f"timed: {args.steps} steps per side after {args.warmup} warm-up step(s), TRL and jaxalign alternating",
    ]
    print("\n" + "\n".join(headline))
    common.print_table("per step (seconds; training = step - rollout; rollout = generation + rewards + "
                       "reference/old log-probs + advantages)",
                       ["step", "TRL gen", "TRL train", "TRL step", "jxa gen", "jxa train", "jxa step", "TRL/jxa",
                        "TRL len", "jxa len"], table)
    timed_trl, timed_jax = trl_rows[args.warmup:], jax_rows[args.warmup:]
    median = {side: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
              for side, rows in (("trl", timed_trl), ("jaxalign", timed_jax))}
    summary_rows = [[phase, median["jaxalign"][phase], median["trl"][phase],
                     median["trl"][phase] / median["jaxalign"][phase]]
                    for phase in ("generation", "rollout", "training", "step")]
    summary_rows.append(["setup (model, data, trainer)", jax_setup, trl_setup, trl_setup / jax_setup])
    common.print_table(f"median over {args.steps} timed steps (seconds)", ["", "jaxalign", "TRL", "TRL/jaxalign"],
                       summary_rows)
    speedup = median["trl"]["step"] / median["jaxalign"]["step"]
    print(f"\nspeed-up per step (median TRL / median jaxalign): {speedup:.2f}x (target >= 4x): "
          f"{'OK' if speedup >= 4 else 'BELOW TARGET'}")
    common.emit_json("grpo_vs_trl", {
        "machine": machine, "load_average": {"before": load_before, "after": load_after},
        "params": params, "args": vars(args), "median_seconds": median, "speedup": speedup,
        "setup_seconds": {"jaxalign": jax_setup, "trl": trl_setup}, "trl_steps": trl_rows, "jaxalign_steps": jax_rows,
        "headline": headline})
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
