"""Records tests/data/ppo_fixed_rollout.npz: one PPO rollout (the second iteration's, so the policy
already differs from its reference) and the train step's output on it.

Run once, on the code BEFORE PPO moved onto the rollout layer (commit c23f918), with the
tests' 8 fake CPU devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/data/record_ppo_fixture.py tests/data/ppo_fixed_rollout.npz

tests/test_ppo_fixture.py replays it on the current code: the same prompts and key give
the same rollout, and the train step on the stored rollout gives the same parameters and
metrics (within 1e-6).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FIXTURE_MODEL = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
                 "tie_word_embeddings": True}


def fixture_config(run_dir: str) -> dict:
    return {
        "algo": "ppo", "run_dir": run_dir, "max_steps": 1, "export": False, "seed": 3,
        "model": {"tokenizer": "builtin", "config": dict(FIXTURE_MODEL)},
        "data": {"train": "builtin:preferences", "batch_size": 8, "max_length": 96, "max_prompt_length": 48,
                 "pad_to_multiple": 16},
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0},
        "ppo": {"reward_function": "jaxalign.rewards_builtin:helpful_harmless", "max_new_tokens": 10,
                "temperature": 0.9, "num_ppo_epochs": 2, "num_mini_batches": 2, "missing_eos_penalty": 0.5,
                "kl_coef": 0.1, "target_kl": 2.0, "kl_horizon": 16, "entropy_coef": 0.01},
        "checkpoint": {"every_steps": 100, "every_minutes": 0},
        "log": {"tensorboard": False},
    }


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {prefix + jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def main(out: str) -> None:
    from jaxalign.config import TrainConfig
    from jaxalign.configlib import from_dict
    from jaxalign.sharding import shard_batch
    from jaxalign.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(from_dict(TrainConfig, fixture_config(run_dir)))
        iterator = trainer.train_data.iterator()
        # One full iteration first, so that the recorded one has a policy apart from its reference.
        first, _ = trainer.algo.rollout(trainer.state, shard_batch(next(iterator), trainer.mesh),
                                        trainer.algo.frozen, "train", 0)
        state, _ = trainer.train_step(trainer.state, first, trainer.algo.frozen)
        host_batch = next(iterator)
        arrays = {**flatten(state.params, "init"), **flatten(trainer.algo.frozen, "frozen"),
                  **flatten(state.opt_state, "opt"), "rng": np.asarray(state.rng), "step": np.asarray(state.step),
                  "kl_coef": np.asarray(state.extra["kl_coef"])}
        arrays.update({f"prompts/{k}": np.asarray(v) for k, v in host_batch.items()})
        batch = shard_batch(host_batch, trainer.mesh)
        rollout, _ = trainer.algo.rollout(state, batch, trainer.algo.frozen, "train", 0)
        arrays.update({f"rollout/{k}": np.asarray(jax.device_get(v)) for k, v in rollout.items()})
        new_state, metrics = trainer.train_step(state, rollout, trainer.algo.frozen)
        arrays.update(flatten(new_state.params, "final"))
        arrays.update({f"metrics/{k}": np.asarray(v) for k, v in jax.device_get(metrics).items()})
        arrays["final_kl_coef"] = np.asarray(new_state.extra["kl_coef"])
        if not np.any(arrays["rollout/kl_sum"]):
            raise AssertionError("the recorded rollout has no KL to its reference")
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays")


if __name__ == "__main__":
    main(sys.argv[1])
