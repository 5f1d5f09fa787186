"""algo grpo end to end: runs, metrics (TRL's names), completions table, reference only with beta,
dynamic sampling, unscored groups, config errors, exact resume after SIGKILL, a learning test."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import cli
from jaxalign.algos import common
from jaxalign.algos import grpo as grpo_algo
from jaxalign.algos.grpo_config import GRPOConfig
from jaxalign.algos.grpo_sampling import DynamicSampler, informative_groups
from jaxalign.config import TrainConfig
from jaxalign.configlib import from_dict
from jaxalign.data import load_tokenizer
from jaxalign.data.config import DataConfig
from jaxalign.data.rows import ExampleRows
from jaxalign.generation import SamplingConfig
from jaxalign.models import ModelConfig, init_model
from jaxalign.rl import RewardSet, RewardSpec, RolloutEngine, SourceContext, prompt_batch
from jaxalign.trainer import Trainer
from tests.train_fixtures import TINY_LLAMA, kill_and_resume, read_metrics, tiny_run_config, write_config

HELPER = str(Path(__file__).with_name("grpo_rewards_helper.py"))
TRL_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
               "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "loss",
               "grad_norm", "rewards/exact_answer/mean", "rewards/exact_answer/std", "rewards/format/mean")


def grpo_config(run_dir: Path, **sections) -> dict:
    """A tiny GRPO run on builtin:arithmetic with the exact-answer and format verifiers."""
    grpo = {"reward_funcs": [{"verifier": "exact_answer"}, {"verifier": "format", "pattern": r"^\s*\d+$"}],
            "reward_weights": [1.0, 0.5], "num_generations": 4, "max_completion_length": 6,
            **sections.pop("grpo", {})}
    base = tiny_run_config(run_dir, algo="grpo", max_steps=2, eval_batches=1,
                           data={"train": "builtin:arithmetic", "eval": "builtin:arithmetic#eval", "batch_size": 4,
                                 "max_length": 48, "max_prompt_length": 32, "pad_to_multiple": 16},
                           optim={"lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
                           checkpoint={"every_steps": 100, "keep": 0, "every_minutes": 0},
                           log={"every_steps": 1, "tensorboard": False, "completions_every": 1})
    base["grpo"] = grpo
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def test_no_reference_exists_with_beta_zero(tmp_path):
    trainer = Trainer(from_dict(TrainConfig, grpo_config(tmp_path / "run", export=False)))
    assert trainer.algo.frozen == {}  # beta 0: no reference built or copied


@pytest.mark.slow  # ~70 s on a shared 2-core CPU (three compilations of a tiny model)
def test_run_logs_trl_metrics_completions_and_kl_over_reused_rollout(tmp_path):
    """beta > 0: a reference copy and the k3 ``kl``; num_iterations x steps_per_generation updates per step,
    the later ones off-policy (their ratios move away from 1 and get clipped at a high learning rate)."""
    run_dir = tmp_path / "run"
    cfg = from_dict(TrainConfig, grpo_config(
        run_dir, max_steps=1, eval_batches=1, export=False, optim={"lr": 0.05},
        grpo={"beta": 0.04, "num_iterations": 2, "steps_per_generation": 2, "loss_type": "grpo",
              "importance_sampling_level": "sequence", "epsilon": 0.01, "scale_rewards": "none",
              "reward_funcs": [{"verifier": "exact_answer"}, {"verifier": "format", "pattern": r"^\s*\d"},
                               f"{HELPER}:parity_on_sums", f"{HELPER}:length_mod_5"],
              "reward_weights": [1.0, 0.5, 1.0, 1.0]}))
    trainer = Trainer(cfg)
    assert set(trainer.algo.frozen) == {common.REF_TRAINED} and trainer.algo.updates_per_step == 4
    result = trainer.run()
    last = read_metrics(run_dir)[1]
    for name in TRL_METRICS + ("kl", "rewards/parity_on_sums/mean"):
        assert np.isfinite(last[f"train/{name}"]), name
    assert last["train/kl"] > 0 and last["train/clip_ratio/region_mean"] > 0  # later updates moved off-policy
    rows = [json.loads(line) for line in (run_dir / "completions" / "step_00000001.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and len({row["prompt"] for row in rows}) == 4
    for row in rows:
        assert set(row["rewards"]) == {"exact_answer", "format", "parity_on_sums", "length_mod_5"}
        assert isinstance(row["advantage"], float)
        r = row["rewards"]
        assert row["reward"] == pytest.approx(r["exact_answer"] + 0.5 * r["format"] + r["parity_on_sums"]
                                              + r["length_mod_5"])
    assert "reward" in result["eval"] and "rewards/exact_answer/mean" in result["eval"]


@pytest.mark.parametrize("iterations, beta", [(1, 0.0), (1, 0.04), (2, 0.0)])
def test_rollout_computes_only_the_log_probs_the_update_reads(tmp_path, monkeypatch, iterations, beta):
    """On-policy (one update per generation batch) the sampling policy's log-probs are the update's
    own, so the rollout skips that pass (as TRL); the reference's only with beta > 0; evaluation
    rollouts compute neither."""
    from jaxalign.data import build_pipeline
    from jaxalign.sharding import MeshConfig, make_mesh, shard_batch

    passes = []
    teacher_force = RolloutEngine.teacher_force

    def spy(self, rollout, policy_params, ref_params=None, value_params=None):
        passes.append((policy_params is not None, ref_params is not None))
        return teacher_force(self, rollout, policy_params, ref_params, value_params)

    monkeypatch.setattr(RolloutEngine, "teacher_force", spy)
    cfg = from_dict(TrainConfig, grpo_config(tmp_path / "run", grpo={"num_iterations": iterations, "beta": beta}))
    assert cfg.grpo.on_policy == (iterations == 1)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    run = cfg.algorithm.setup(cfg, mesh, tokenizer, 2)
    for split in ("train", "eval"):
        prompts = shard_batch(next(build_pipeline(cfg.data, tokenizer, split=split, kind="prompt").iterator()), mesh)
        batch, metrics = run.rollout(run.state, prompts, run.frozen, split, 0)
        training = split == "train"
        assert passes[-1] == (training and iterations > 1, training and beta > 0)
        assert ("old_logps" in batch) == (training and iterations > 1)
        assert ("ref_logps" in batch) == (training and beta > 0)
        assert metrics["time/logps_s"] >= 0
    _, metrics = run.train_step(run.state, batch, run.frozen)  # the eval batch has what an update needs
    assert np.isfinite(float(metrics["loss"]))


def test_on_policy_loss_has_the_gradient_of_the_stored_log_probs_loss():
    """Without ``old_logps`` the update uses its own log-probs, gradient stopped: the same loss
    and gradient as with the sampling policy's log-probs stored (equal values on-policy)."""
    rng = np.random.default_rng(0)
    cfg = GRPOConfig(reward_funcs=["x"], beta=0.04, loss_type="dapo", epsilon=0.2)
    mask = jnp.asarray(rng.random((4, 6)) > 0.3, jnp.float32)
    minibatch = {"loss_mask": mask, "row_mask": jnp.ones(4), "advantages": jnp.asarray(rng.normal(size=4), jnp.float32),
                 "ref_logps": jnp.asarray(-rng.random((4, 6)), jnp.float32) * mask}
    logps = jnp.asarray(-rng.random((4, 6)) * 3, jnp.float32)
    entropy = jnp.zeros_like(logps)

    def loss(logps, batch):
        return grpo_algo.update_loss(logps, entropy, batch, jnp.sum(mask), cfg)[0]

    own = jax.value_and_grad(loss)(logps, minibatch)
    stored = jax.value_and_grad(loss)(logps, {**minibatch, "old_logps": logps})  # a constant: not differentiated
    np.testing.assert_allclose(own[0], stored[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(own[1]), np.asarray(stored[1]), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(own[1])).max() > 0


PROMPTS = ["\n\nHuman: What is 2 times 3?\n\nAssistant:", "\n\nHuman: What is 5 minus 3?\n\nAssistant:",
           "\n\nHuman: What is 2 + 3?\n\nAssistant:", "\n\nHuman: What is 4 + 1?\n\nAssistant:"]


@pytest.fixture(scope="module")
def rig():
    """One tiny policy and rollout engine (compiled once for the module's tests) scoring with
    parity_on_sums, and the builtin:arithmetic training rows dynamic sampling refills from."""
    from flax import nnx

    tokenizer = load_tokenizer("builtin")
    policy = init_model(ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=1,
                                    num_heads=2, eos_token_id=tokenizer.eos_token_id), seed=0)
    rewards = RewardSet.build([RewardSpec("function", f"{HELPER}:parity_on_sums")], SourceContext(tokenizer=tokenizer))
    engine = RolloutEngine(policy, tokenizer, SamplingConfig(max_new_tokens=5, temperature=1.0,
                           stop_token_ids=(tokenizer.eos_token_id,)), rewards=rewards, num_generations=4)
    data = DataConfig(train="builtin:arithmetic", max_length=48, max_prompt_length=32, pad_to_multiple=16)
    rows = ExampleRows.of_split(data, "train", tokenizer)
    return engine, nnx.split(policy)[1], tokenizer, data, rows, prompt_batch(tokenizer, PROMPTS)


def _sampler(rig, **options):
    engine, _, tokenizer, data, rows, _ = rig
    cfg = GRPOConfig(reward_funcs=["x:y"], num_generations=4, max_completion_length=5, **options)
    return DynamicSampler(engine, cfg, data, tokenizer, rows), cfg


def test_dynamic_sampling_drops_equal_groups_and_refills_deterministically(rig):
    engine, params, _, _, _, prompts = rig
    sampler, _ = _sampler(rig, dynamic_sampling=True, max_dynamic_sampling_tries=3)
    key = jax.random.key(7)
    selected, keep, metrics = sampler(params, prompts, key, None, dynamic=True)
    assert selected.batch.num_rows == 16 and keep.shape == (16,)
    kept = int(metrics["dynamic_sampling/kept_groups"])
    assert kept + metrics["dynamic_sampling/filler_groups"] == 4
    assert metrics["dynamic_sampling/dropped_groups"] >= 2  # the product and the unscored prompt at least
    assert 2 <= metrics["dynamic_sampling/tries"] <= 3
    assert informative_groups(selected)[:kept] == list(range(kept))  # kept groups first, all informative
    assert np.all(np.asarray(keep)[:4 * kept] == 1) and np.all(np.asarray(keep)[4 * kept:] == 0)
    assert all("+" in p for p in selected.prompts[:4 * kept])
    again, _, again_metrics = sampler(params, prompts, key, None, dynamic=True)
    assert again.completions == selected.completions and again_metrics == metrics  # same key, same batch
    plain, plain_keep, plain_metrics = sampler(params, prompts, key, None, dynamic=False)
    assert plain_metrics == {} and np.all(np.asarray(plain_keep) == 1) and plain.prompts == [
        p for p in PROMPTS for _ in range(4)]


def test_groups_no_source_scored_are_reported_and_left_out(rig):
    engine, params, _, _, _, prompts = rig
    sampler, cfg = _sampler(rig)
    scored, keep, _ = sampler(params, prompts, jax.random.key(0), None, dynamic=False)
    record = engine.teacher_force(scored, params)
    assert grpo_algo._unscored_groups(record) == 1  # the "minus" prompt
    batch = grpo_algo.prepare(record.batch, keep, cfg)
    unscored = slice(4, 8)
    assert np.all(np.asarray(batch["row_mask"])[unscored] == 0) and np.all(np.asarray(batch["advantages"])[unscored] == 0)
    assert np.all(np.asarray(batch["loss_mask"])[unscored] == 0)
    assert np.all(np.delete(np.asarray(batch["row_mask"]), np.r_[unscored]) == 1)


def test_mask_truncated_completions_drops_their_tokens_not_their_rewards(rig):
    engine, params, _, _, _, prompts = rig
    sampler, cfg = _sampler(rig, mask_truncated_completions=True)
    scored, keep, _ = sampler(params, prompts, jax.random.key(1), None, dynamic=False)
    record = engine.teacher_force(scored, params)
    batch = grpo_algo.prepare(record.batch, keep, cfg)
    truncated = np.asarray(record.batch.truncated)
    assert truncated.any()  # a random policy rarely stops within 5 tokens
    loss_mask, row_mask = np.asarray(batch["loss_mask"]), np.asarray(batch["row_mask"])
    assert np.all(loss_mask[truncated] == 0) and np.all(loss_mask[~truncated & (row_mask > 0)].sum(1) > 0)
    assert np.all(row_mask[truncated & np.asarray(record.batch.reward_valid)] == 1)  # still counted as replies


@pytest.mark.parametrize("grpo, extra, message", [
    ({"reward_funcs": None}, {}, "set grpo.reward_funcs"),
    ({"num_generations": 1}, {}, "num_generations must be >= 2"),
    ({"steps_per_generation": 3}, {}, "steps_per_generation 3 does not divide the 16 rows"),
    ({"loss_type": "dapoo"}, {}, "Did you mean 'dapo'"),
    ({"reward_weights": [1.0]}, {}, "1 weights for 2 reward sources"),
    ({"generation_slots": -1}, {}, "generation_slots must be >= 1 (rows sampled at once), or 0"),
    ({}, {"ref_model": {"config": dict(TINY_LLAMA), "tokenizer": "builtin"}}, "grpo.beta is 0"),
])
def test_config_errors_are_one_clear_line(tmp_path, capsys, grpo, extra, message):
    config = grpo_config(tmp_path / "run", grpo=grpo, **extra)
    code = cli.main(["train", str(write_config(tmp_path / "grpo.yaml", config))])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_run(tmp_path):
    """Killed with SIGKILL after a checkpoint, the rerun samples the same replies (dynamic sampling's refill
    prompts included): the same metrics at every later step and the same exported policy, byte for byte."""
    config = grpo_config(tmp_path / "placeholder", max_steps=4, eval_batches=0,
                         grpo={"dynamic_sampling": True, "reward_funcs": [f"{HELPER}:parity_on_sums"],
                               "reward_weights": None, "num_iterations": 2, "beta": 0.02},
                         checkpoint={"every_steps": 2}, log={"completions_every": 0})
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_cfg = write_config(tmp_path / "reference.yaml", {**config, "run_dir": str(reference_dir)})
    resumed_cfg = write_config(tmp_path / "resumed.yaml", {**config, "run_dir": str(resumed_dir)})
    killed_after = kill_and_resume(reference_cfg, resumed_cfg, resumed_dir, 4)
    reference, resumed = read_metrics(reference_dir), read_metrics(resumed_dir)
    later = [step for step in resumed if step > killed_after]
    assert later and max(later) == 4
    for step in later:
        for name in ("train/reward", "train/kl", "train/loss", "train/dynamic_sampling/tries",
                     "train/completions/mean_length"):
            assert resumed[step][name] == reference[step][name], (step, name)
    assert (resumed_dir / "export" / "model.safetensors").read_bytes() == \
        (reference_dir / "export" / "model.safetensors").read_bytes()


# The learning test: SFT (150 steps) gives the quickstart's model the answer format of builtin:compare, then
# 120 GRPO steps (16 prompts x 8 replies, exact-answer reward only, lr 3e-4) raise its accuracy on the 27
# held-out pairs (8 replies each at temperature 1; tests/grpo_learning.py). Measured 2026-12-03 on the shared
# 2-core CPU (load 10-20) with
#   python -m tests.learning_margins tests.grpo_learning:GRPO_LEARNING --seeds 0 1 2 --perturbations one_device default
# one_device: seed 0 0.398 -> 0.486 (+0.088), seed 1 0.880 -> 0.926 (+0.046), seed 2 0.361 -> 0.407 (+0.046);
# default (8 fake devices, as the test runs): seed 0 0.398 -> 0.509 (+0.111).
# The lift is small (the quickstart's +0.10 is the same run) and one held-out reply is 1/216 = 0.005, so the
# bound is under half the smallest measured lift: it catches GRPO not learning (or unlearning), not a
# weaker run. Default seeds 1 and 2 are unmeasured: twice (seed 0 in a first attempt, then seed 1) the SFT
# stage with 8 fake devices stopped on an XLA CPU all-reduce rendezvous timeout ("only 7 of 8 threads
# arrived", 900 s); fast_math and vector128 were not run. That abort was not load: the trainer let the host
# run 20 steps ahead and XLA:CPU deadlocked (fixed in _MetricsWindow; docs/dev-notes/suite.md, session 9).
LIFT = 0.02


@pytest.mark.slow
def test_grpo_lifts_held_out_accuracy(tmp_path):
    from jaxalign.trainer import train
    from tests.grpo_learning import learning_config, learning_summary

    run_dir = tmp_path / "run"
    train(from_dict(TrainConfig, learning_config(run_dir, seed=0)))
    summary = learning_summary(run_dir)
    assert summary["lift"] > LIFT, summary


def test_docs_python_example_builds_its_config(monkeypatch):
    """docs/grpo.md's Python block, with train() replaced by a check of the config it builds."""
    import re

    import jaxalign.trainer

    text = (Path(__file__).resolve().parent.parent / "docs" / "grpo.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    seen = {}

    def fake_train(cfg):
        seen["cfg"] = cfg
        return {"train": {"reward": 0.0}, "eval": {"rewards/exact_answer/mean": 0.0}}

    monkeypatch.setattr(jaxalign.trainer, "train", fake_train)
    exec(compile(block, "docs/grpo.md", "exec"), {})
    cfg = seen["cfg"]
    assert cfg.algo == "grpo" and cfg.grpo.num_generations == 4 and len(cfg.grpo.reward_specs()) == 2
    cfg.grpo.check_for_run(cfg.data.batch_size)
