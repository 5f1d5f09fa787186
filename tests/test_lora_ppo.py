"""PPO with LoRA on the rollout layer: the policy's adapters train, the reference is the same base
with adapters off (no copy), the sampler uses the adapted policy, resume is exact."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxalign import rl
from jaxalign.algos import common, policy as policy_lib
from jaxalign.config import TrainConfig
from jaxalign.configlib import from_dict
from jaxalign.data import build_pipeline, load_tokenizer
from jaxalign.generation import SamplingConfig
from jaxalign.models.lora import is_adapter
from jaxalign.models.trainable import leaf_paths
from jaxalign.sharding import MeshConfig, make_mesh, shard_batch
from jaxalign.trainer import Trainer
from tests.test_ppo import ppo_config
from tests.train_fixtures import assert_adapter_run_resumes_exactly


def _cfg(run_dir: Path, **sections) -> TrainConfig:
    return from_dict(TrainConfig, ppo_config(run_dir, lora={"rank": 4, "export": "adapter"}, **sections))


def test_lora_ppo_reference_is_the_base_with_adapters_off_and_the_sampler_uses_the_adapters(tmp_path):
    """The state holds the adapters and the value head only; the frozen input holds the base once; the
    reference's log-probs equal the base model's; adapters moved by hand change what the sampler draws."""
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    cfg = _cfg(tmp_path / "run")
    run = cfg.algorithm.setup(cfg, mesh, tokenizer, 4)
    trained = [path for path, _ in leaf_paths(run.state.params["policy"])]
    assert trained and all(is_adapter(path) for path in trained)
    assert set(run.state.params["value"]) == {"kernel"}
    base = common.build_model(cfg.model, cfg, mesh, "causal_lm", tokenizer)  # the same seed, no adapters
    _, base_params = common.split_params(base)
    assert set(run.frozen) == {"frozen_params"}  # no reference copy, no other frozen model
    frozen_leaves = jax.tree.leaves(run.frozen)
    assert len({id(leaf) for leaf in frozen_leaves}) == len(frozen_leaves) == len(jax.tree.leaves(base_params))

    built = policy_lib.build_policy(cfg, mesh, tokenizer, frozen_dtype=cfg.ppo.frozen_dtype)
    reference = nnx.merge(built.reference_graphdef, built.reference(built.frozen))
    prompts = shard_batch(next(build_pipeline(cfg.data, tokenizer, split="train", kind="prompt").iterator()), mesh)
    replies = np.asarray(jax.random.randint(jax.random.key(1), (prompts["prompt_ids"].shape[0], 8), 3, 200))
    rows = (prompts["prompt_ids"], prompts["prompt_mask"], replies, np.ones(replies.shape, np.float32))
    logps = jax.jit(lambda model: rl.policy_pass(model, *rows, 1.0)[0])
    np.testing.assert_array_equal(logps(reference), logps(base))

    # The adapted policy (B moved off zero) is what the sampler draws from.
    engine = rl.RolloutEngine((built.graphdef, built.full(built.params, built.frozen)), tokenizer,
                              SamplingConfig(max_new_tokens=6, temperature=0.0), mesh=mesh)
    moved = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf + 0.5 if str(path[-1].key) == "lora_b" else leaf, built.params)
    key = jax.random.key(0)
    at_base = engine.sample(built.full(built.params, built.frozen), prompts, key).batch.completion_ids
    adapted = engine.sample(built.full(moved, built.frozen), prompts, key).batch.completion_ids
    assert not np.array_equal(np.asarray(at_base), np.asarray(adapted))


@pytest.mark.slow
def test_lora_ppo_trains_resumes_exactly_and_exports_an_adapter(tmp_path):
    """Steps 3-4 after resuming from step 2 repeat the straight run exactly; checkpoints hold adapters,
    the value head and their AdamW state; the policy moves away from its reference (KL > 0)."""
    def config(run_dir: Path) -> TrainConfig:
        return _cfg(run_dir, max_steps=4, eval_batches=0, optim={"lr": 1e-2, "schedule": "constant",
                                                                "warmup_steps": 0},
                    checkpoint={"every_steps": 2, "keep": 0, "every_minutes": 0},
                    log={"every_steps": 1, "tensorboard": False, "sinks": ["jsonl"]})

    first = assert_adapter_run_resumes_exactly(
        config, tmp_path, ("train/objective/scores", "train/objective/kl", "train/loss"))
    assert first[4]["train/objective/kl"] > 0  # the adapters moved the policy off the base (its reference)


def test_lora_ppo_refuses_dropout(tmp_path):
    with pytest.raises(ValueError, match="lora.dropout: 0.1 would make PPO's ratio"):
        from_dict(TrainConfig, ppo_config(tmp_path / "run", lora={"dropout": 0.1}))


@pytest.mark.slow
def test_lora_ppo_value_model_from_a_folder_trains_adapters_and_its_score_head(tmp_path):
    """A separate value model gets its own adapters and a fully trained score head; its base is frozen."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    cfg = _cfg(tmp_path / "run", max_steps=2, eval_batches=0, ppo={"value_model": str(tmp_path / "rm")})
    trainer = Trainer(cfg)
    value = [path for path, _ in leaf_paths(trainer.state.params["value"])]
    assert "score/kernel" in value and all(is_adapter(path) or path == "score/kernel" for path in value)
    assert set(trainer.algo.frozen) == {"frozen_params", "value"}
    start = jax.device_get(trainer.state.params["value"])
    result = trainer.run()
    assert result["step"] == 2
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), start,
                         jax.device_get(trainer.state.params["value"]))
    assert moved["score"]["kernel"] > 0
