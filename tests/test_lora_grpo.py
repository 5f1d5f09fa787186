"""GRPO with LoRA on the rollout layer: the policy's adapters train, the reference is the same base
with adapters off (no copy; with beta 0 none at all), the sampler uses the adapted policy, resume is
exact and the export is a PEFT adapter."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign import rl
from jaxalign.algos import common
from jaxalign.config import TrainConfig
from jaxalign.configlib import from_dict
from jaxalign.data import build_pipeline, load_tokenizer
from jaxalign.models.lora import is_adapter
from jaxalign.models.trainable import leaf_paths
from jaxalign.sharding import MeshConfig, make_mesh, shard_batch
from tests.test_grpo import HELPER, grpo_config
from tests.train_fixtures import assert_adapter_run_resumes_exactly


def _cfg(run_dir: Path, grpo: dict | None = None, **sections) -> TrainConfig:
    return from_dict(TrainConfig, grpo_config(run_dir, lora={"rank": 4, "export": "adapter"},
                                              grpo={"beta": 0.04, **(grpo or {})}, **sections))


def test_lora_grpo_state_holds_adapters_and_reference_log_probs_are_the_base_models(tmp_path):
    """The state holds the adapters only; the frozen input holds the base once (with beta 0 nothing else
    either); with the adapters moved off zero, the rollout samples from the adapted policy while its
    reference log-probs equal the base model's on the same replies."""
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    no_reference = _cfg(tmp_path / "beta0", grpo={"beta": 0.0})
    assert set(no_reference.algorithm.setup(no_reference, mesh, tokenizer, 2).frozen) == {common.FROZEN_PARAMS}

    cfg = _cfg(tmp_path / "run", grpo={"num_iterations": 2})  # off-policy updates: the rollout stores old log-probs
    run = cfg.algorithm.setup(cfg, mesh, tokenizer, 2)
    trained = [path for path, _ in leaf_paths(run.state.params["policy"])]
    assert trained and all(is_adapter(path) for path in trained)
    assert set(run.frozen) == {common.FROZEN_PARAMS}  # the reference is the frozen base itself: no copy
    base = common.build_model(cfg.model, cfg, mesh, "causal_lm", tokenizer)  # the same seed, no adapters
    base_params = common.split_params(base)[1]
    assert len(jax.tree.leaves(run.frozen)) == len(jax.tree.leaves(base_params))

    moved = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf + 0.5 if str(path[-1].key) == "lora_b" else leaf, run.state.params)
    state = run.state.replace(params=moved)
    prompts = shard_batch(next(build_pipeline(cfg.data, tokenizer, split="train", kind="prompt").iterator()), mesh)
    batch, _ = run.rollout(state, prompts, run.frozen, "train", 0)
    rows = (batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["loss_mask"])
    base_logps = jax.jit(lambda model: rl.policy_pass(model, *rows, cfg.grpo.temperature)[0])(base)
    mask = np.asarray(batch["loss_mask"])
    assert mask.sum() > 0
    np.testing.assert_allclose(np.asarray(batch["ref_logps"]), np.asarray(base_logps) * mask, atol=1e-6)
    # The old log-probs (and the replies) come from the adapted policy, not the base.
    assert np.abs(np.asarray(batch["old_logps"]) - np.asarray(batch["ref_logps"])).max() > 1e-3


@pytest.mark.slow  # ~60 s on a shared 2-core CPU
def test_lora_grpo_trains_resumes_exactly_and_exports_an_adapter(tmp_path):
    """Steps 3-4 after resuming from step 2 repeat the straight run exactly (same replies: dynamic
    sampling's refills included); checkpoints hold adapters and their AdamW state; the adapters move
    the policy off its reference (kl > 0); the export is a PEFT adapter folder."""
    def config(run_dir: Path) -> TrainConfig:
        return _cfg(run_dir, max_steps=4, eval_batches=0, optim={"lr": 1e-2},
                    grpo={"dynamic_sampling": True, "reward_funcs": [f"{HELPER}:parity_on_sums"],
                          "reward_weights": None, "num_iterations": 2},
                    checkpoint={"every_steps": 2}, log={"completions_every": 0})

    first = assert_adapter_run_resumes_exactly(
        config, tmp_path, ("train/reward", "train/kl", "train/loss", "train/completions/mean_length"))
    assert first[4]["train/kl"] > 0  # the adapters moved the policy off the base (its reference)


def test_lora_grpo_refuses_dropout(tmp_path):
    with pytest.raises(ValueError, match="lora.dropout: 0.1 would make GRPO's ratio"):
        from_dict(TrainConfig, grpo_config(tmp_path / "run", lora={"dropout": 0.1}))
