"""SFT and the DPO family end to end: learning, reference handling, packing, custom losses."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign import cli
from jaxalign.algos import dpo, sft
from jaxalign.config import load_config
from jaxalign.configlib import ConfigError
from jaxalign.data import build_pipeline, load_tokenizer, pack_examples, unpack
from jaxalign.sharding import MeshConfig, make_mesh, shard_batch
from tests.train_fixtures import read_metrics, tiny_run_config, write_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin")


@pytest.fixture(scope="module")
def one_device():
    return make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])


def _config(tmp_path, algo="dpo", **sections):
    return load_config(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", algo=algo, **sections)))


def _first_batch(cfg, tokenizer, kind, split="train"):
    pipeline = build_pipeline(cfg.data, tokenizer, split=split, kind=kind)
    return next(pipeline.iterator())


def _train(tmp_path, *overrides, algo="dpo", **sections):
    path = write_config(tmp_path / f"{algo}.yaml", tiny_run_config(tmp_path / f"run-{algo}", algo=algo, **sections))
    code = cli.main(["train", str(path), *[arg for o in overrides for arg in ("--set", o)]])
    assert code == 0
    return read_metrics(tmp_path / f"run-{algo}", prefix="eval/")


@pytest.mark.slow
def test_dpo_raises_heldout_accuracy_and_margin(tmp_path):
    evals = _train(tmp_path, "max_steps=40", "eval_every=10", "eval_batches=0", "optim.lr=5e-4",
                   "data.max_length=128")
    first, last = evals[min(evals)], evals[max(evals)]
    assert last["eval/rewards/accuracies"] > 0.8
    assert last["eval/rewards/margins"] > first["eval/rewards/margins"] > 0


@pytest.mark.slow
def test_sft_lowers_heldout_loss(tmp_path):
    data = {"train": "builtin:sft", "eval": "builtin:sft#eval", "batch_size": 8, "max_length": 96}
    evals = _train(tmp_path, "max_steps=30", "eval_every=10", "eval_batches=0", "optim.lr=3e-3", algo="sft", data=data)
    first, last = evals[min(evals)], evals[max(evals)]
    uniform_guess = np.log(len(load_tokenizer("builtin")))
    assert last["eval/loss"] < first["eval/loss"] - 0.3
    assert last["eval/loss"] < uniform_guess - 1.0
    assert last["eval/perplexity"] == pytest.approx(np.exp(last["eval/loss"]), rel=1e-5)
    assert last["eval/mean_token_accuracy"] > first["eval/mean_token_accuracy"]


@pytest.mark.parametrize("loss_name", ["simpo", "orpo", "cpo"])
def test_reference_free_losses_hold_no_reference(tmp_path, tokenizer, one_device, loss_name):
    cfg = _config(tmp_path, loss={"name": loss_name})
    run = dpo.setup(cfg, one_device, tokenizer, total_steps=4)
    assert run.frozen == {}
    batch = shard_batch(_first_batch(cfg, tokenizer, "preference"), one_device)
    _, metrics = jax.jit(run.train_step)(run.state, batch, run.frozen)
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow  # 45 s (45 CPU s) at load 4 on 2 cores, 2026-12-03
def test_precomputed_and_in_step_reference_give_the_same_loss(tmp_path, tokenizer, one_device):
    in_step_cfg = _config(tmp_path, loss={"name": "sigmoid", "beta": 0.5}, optim={"warmup_steps": 0, "lr": 1e-2})
    precomputed_cfg = dataclasses.replace(in_step_cfg, precompute_ref_logps=True)
    host_batch = _first_batch(in_step_cfg, tokenizer, "preference")
    losses = {}
    for name, cfg in (("in_step", in_step_cfg), ("precomputed", precomputed_cfg)):
        run = dpo.setup(cfg, one_device, tokenizer, total_steps=4)
        batch = shard_batch(host_batch, one_device)
        # One update first, so policy and reference differ and the loss is not log(2).
        state, _ = jax.jit(run.train_step)(run.state, batch, run.frozen)
        losses[name] = float(jax.jit(run.train_step)(state, batch, run.frozen)[1]["loss"])
        if name == "precomputed":
            assert set(run.frozen) == {"ref_train", "ref_eval"}
            assert (tmp_path / "run" / "ref_logps_train.npy").exists()
    assert losses["in_step"] != pytest.approx(np.log(2.0), abs=1e-4)
    assert losses["precomputed"] == pytest.approx(losses["in_step"], abs=1e-5)


def test_kto_uses_mismatched_completions_for_its_kl_baseline(tmp_path, tokenizer, one_device):
    data = {"train": "builtin:kto", "eval": "builtin:kto#eval"}
    cfg = _config(tmp_path, loss={"name": "kto"}, data=data)
    assert dpo.data_kind(cfg) == "unpaired"
    run = dpo.setup(cfg, one_device, tokenizer, total_steps=4)
    batch = shard_batch(_first_batch(cfg, tokenizer, "unpaired"), one_device)
    state, _ = jax.jit(run.train_step)(run.state, batch, run.frozen)
    metrics = jax.jit(run.eval_step)(state, batch, run.frozen)
    assert float(metrics["kl"]) >= 0.0 and np.isfinite(float(metrics["loss"]))


def test_sft_packing_gives_the_same_loss_as_one_example_per_row(tmp_path, tokenizer, one_device):
    data = {"train": "builtin:sft", "eval": None, "batch_size": 8, "max_length": 64, "pack_length": 256}
    cfg = _config(tmp_path, algo="sft", data=data)
    packed = _first_batch(cfg, tokenizer, "sft")
    examples = unpack(packed)
    unpacked_cfg = dataclasses.replace(cfg.data, packing=False)
    padded = pack_examples(examples, slots=packed["example_mask"].shape[1],
                           pack_length=unpacked_cfg.resolved_pack_length(paired=False), pad_to_multiple=16)
    assert padded["input_ids"].shape[0] == len(examples)  # one example per row: plain padding
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    run = sft.setup(cfg, one_device, tokenizer, total_steps=4)
    eval_step = jax.jit(run.eval_step)
    packed_loss = float(eval_step(run.state, shard_batch(packed, one_device), run.frozen)["loss"])
    padded_loss = float(eval_step(run.state, shard_batch(padded, one_device), run.frozen)["loss"])
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)


def test_user_loss_trains_through_the_cli(tmp_path):
    evals = _train(tmp_path, "max_steps=3", "eval_batches=1",
                   loss={"name": "tests.user_losses_helper:margin_loss", "options": {"margin": 1.0}})
    assert "eval/user/gap" in evals[max(evals)]


def test_config_checks_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="loss 'simpo' is reference-free"):
        _config(tmp_path, loss={"name": "simpo"}, precompute_ref_logps=True)
    with pytest.raises(ConfigError, match="beta"):
        _config(tmp_path, loss={"name": "sigmoid", "beta": 0})
    with pytest.raises(ConfigError, match="algo rm trains with a reward-model loss"):
        _config(tmp_path, algo="rm", loss={"name": "ipo"})
