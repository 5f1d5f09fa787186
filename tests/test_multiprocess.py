"""Several hosts, simulated: two CPU processes (2 fake devices each, gloo over
loopback) run the real ``jaxalign train`` command line over one 4-device mesh
and must match one process with 4 devices. Also: resuming across processes,
changing the process count, and restoring onto another mesh.
"""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.config import load_config
from jaxalign.sharding import MeshConfig, make_mesh
from tests._mp_cluster import assert_all_ok, train_one_process, train_processes
from tests.train_fixtures import read_metrics, tiny_run_config, write_config

# Different collectives (gloo across processes, in-process reductions in one)
# sum in different orders: results agree to float32 rounding, not bitwise.
PARAM_ATOL = 1e-5
METRIC_RTOL = 1e-5


def _config(tmp_path, name: str, algo: str, **sections):
    sections = {"max_steps": 4, "eval_batches": 2, "checkpoint": {"every_steps": 2, "keep": 0, "every_minutes": 0},
                **sections}
    return write_config(tmp_path / f"{name}.yaml", tiny_run_config(tmp_path / name, algo=algo, **sections))


def _weights(run_dir) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


def _assert_same_weights(actual: dict, expected: dict, atol: float = PARAM_ATOL) -> float:
    assert actual.keys() == expected.keys()
    worst = max(float(np.max(np.abs(actual[k] - expected[k]))) for k in expected)
    assert worst <= atol, f"largest parameter difference {worst:.3g} > {atol}"
    return worst


def _assert_same_metrics(actual: dict, expected: dict) -> None:
    """Per-step metrics agree except wall-clock ones (``tokens_per_s``, the RL phases' ``time/``) and
    compile counts (``perf/``: each process compiles its own helpers), and DPO's accuracy while the
    policy still equals its reference: then every margin is 0 up to rounding and
    its sign (what the accuracy counts) is noise."""
    assert actual.keys() == expected.keys()
    for step in expected:
        names = {n for n in expected[step]
                 if "tokens_per_s" not in n and "/perf/" not in n and "/time/" not in n}
        margins = [value for name, value in expected[step].items() if name.endswith("rewards/margins")]
        if margins and abs(margins[0]) < 1e-3:
            names = {n for n in names if not n.endswith("rewards/accuracies")}
        assert names <= actual[step].keys(), step
        for name in names:
            np.testing.assert_allclose(actual[step][name], expected[step][name], rtol=METRIC_RTOL, atol=1e-6,
                                       err_msg=f"{name} at step {step}")


def _assert_written_once(run_dir) -> None:
    """Only process 0 writes shared files: one metrics line per logged step, one export."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)), "metrics logged twice (by both processes?)"
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "export" / "tokenizer.json").exists()


def _train_two_and_one(tmp_path, algo: str, **sections):
    two = _config(tmp_path, "two", algo, **sections)
    assert_all_ok(train_processes(two))
    one = _config(tmp_path, "one", algo, **sections)
    single = train_one_process(one, devices=4)
    assert single.returncode == 0, single.output[-4000:]
    return tmp_path / "two", tmp_path / "one"


@pytest.mark.slow
def test_reward_model_two_processes_match_one_resume_and_change_process_count(tmp_path):
    two_dir, one_dir = _train_two_and_one(tmp_path, "rm")
    _assert_written_once(two_dir)
    assert sorted(p.name for p in (two_dir / "checkpoints" / "4" / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    _assert_same_metrics(read_metrics(two_dir), read_metrics(one_dir))
    _assert_same_metrics(read_metrics(two_dir, "eval/"), read_metrics(one_dir, "eval/"))
    _assert_same_weights(_weights(two_dir), _weights(one_dir))

    # Resume in two processes: drop the last checkpoint and the export; the rerun
    # continues from step 2 and must land on the same weights, bit for bit.
    first_weights, first_metrics = _weights(two_dir), read_metrics(two_dir)
    shutil.rmtree(two_dir / "checkpoints" / "4")
    shutil.rmtree(two_dir / "export")
    resumed = train_processes(tmp_path / "two.yaml")
    assert_all_ok(resumed)
    assert "resumed from checkpoint at step 2" in resumed[0].output
    _assert_same_weights(_weights(two_dir), first_weights, atol=0.0)
    assert read_metrics(two_dir)[4]["train/loss"] == first_metrics[4]["train/loss"]

    # One process cannot take over two processes' data positions...
    refused = train_one_process(tmp_path / "two.yaml", devices=4)
    assert refused.returncode == 1
    assert "saved by 2 process(es)" in refused.output and "data.reset_iterator_on_restore=true" in refused.output
    # ...but restores their model onto another process count and mesh once told to reset the data.
    shutil.rmtree(two_dir / "export")
    moved = train_one_process(tmp_path / "two.yaml", "data.reset_iterator_on_restore=true", "mesh.data=1",
                              "mesh.fsdp=2", "mesh.tensor=2", devices=4)
    assert moved.returncode == 0, moved.output[-4000:]
    assert "resumed from checkpoint at step 4" in moved.output
    _assert_same_weights(_weights(two_dir), first_weights, atol=0.0)


@pytest.mark.slow
def test_dpo_two_processes_with_precomputed_reference_match_one_computing_it_in_the_step(tmp_path):
    """Two processes score the reference log-probs up front (each its shard; the tables come back whole
    and equal to one process's), train on them and match one process that runs the reference inside
    its train step. One launch pair checks both (they were two tests: each launch pays jax's import
    and compiles); the reference pass inside a multi-process step stays covered by the GRPO test."""
    from jaxalign.algos import common, dpo
    from jaxalign.data import load_tokenizer

    two = _config(tmp_path, "two", "dpo", precompute_ref_logps=True)
    finished = train_processes(two)
    assert_all_ok(finished)
    assert "reference log-probs for train:" in finished[0].output
    single = train_one_process(_config(tmp_path, "one", "dpo"), devices=4)
    assert single.returncode == 0, single.output[-4000:]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    assert not (one_dir / "ref_logps_train.npy").exists()  # the single process did compute it in the step
    _assert_written_once(two_dir)
    _assert_same_metrics(read_metrics(two_dir), read_metrics(one_dir))
    _assert_same_metrics(read_metrics(two_dir, "eval/"), read_metrics(one_dir, "eval/"))
    assert read_metrics(two_dir, "eval/")[4]["eval/rewards/margins"] != 0.0  # the reference was in play
    _assert_same_weights(_weights(two_dir), _weights(one_dir))

    cfg = load_config(two, [f"run_dir={tmp_path / 'scored'}"])
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    graphdef, params = common.split_params(common.build_model(cfg.model, cfg, mesh, "causal_lm", tokenizer))
    tables = dpo.precomputed_reference(cfg, mesh, tokenizer, graphdef, params)
    for split in ("train", "eval"):
        written = np.load(two_dir / f"ref_logps_{split}.npy")
        expected = np.asarray(tables[f"ref_{split}"])
        assert written.shape == expected.shape and np.all(written < 0)  # every example scored
        np.testing.assert_allclose(written, expected, rtol=1e-5)


def test_resume_onto_another_mesh_restores_the_saved_state(tmp_path, monkeypatch):
    """Trainer level: train on 8 devices with fsdp=8, resume on 4 devices with
    tensor=4 (and the data reset that a changed process count would need)."""
    from jaxalign import trainer as trainer_module

    config = write_config(tmp_path / "c.yaml", tiny_run_config(
        tmp_path / "run", max_steps=2, eval_batches=1, export=False, mesh={"data": 1, "fsdp": 8},
        checkpoint={"every_steps": 2, "keep": 0, "every_minutes": 0}, log={"every_steps": 1, "tensorboard": False}))
    first = trainer_module.Trainer(load_config(config))
    first.run()
    saved = jax.device_get(first.state)

    four_devices = jax.devices()[:4]
    monkeypatch.setattr(trainer_module, "make_mesh", lambda mesh_cfg: make_mesh(mesh_cfg, devices=four_devices))
    second = trainer_module.Trainer(load_config(config, [
        "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=4", "data.reset_iterator_on_restore=true"]))
    result = second.run()  # restores step 2 = max_steps: evaluates, trains nothing
    assert result["step"] == 2
    leaves = jax.tree.leaves(second.state)
    assert all(leaf.sharding.mesh.devices.size == 4 for leaf in leaves)
    mlp = second.state.params["model"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    assert mlp.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    restored = jax.device_get(second.state)
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for expected, actual in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.slow
def test_grpo_two_processes_match_one(tmp_path):
    """GRPO over two processes (sampling, Python reward functions on every process over the whole batch,
    dynamic sampling's refills, the reference pass, two passes per rollout) matches one process: the same
    replies (completion lengths, rewards) and the same parameters up to float32 rounding."""
    from tests.test_grpo import HELPER, grpo_config

    def config(name: str):
        return write_config(tmp_path / f"{name}.yaml", grpo_config(
            tmp_path / name, max_steps=3, eval_batches=1, checkpoint={"every_steps": 2},
            grpo={"beta": 0.04, "num_iterations": 2, "dynamic_sampling": True,
                  "reward_funcs": [{"verifier": "exact_answer"}, f"{HELPER}:parity_on_sums"],
                  "reward_weights": [1.0, 1.0]},
            log={"completions_every": 0, "tensorboard": False}))

    assert_all_ok(train_processes(config("two")))
    single = train_one_process(config("one"), devices=4)
    assert single.returncode == 0, single.output[-4000:]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    _assert_written_once(two_dir)
    two, one = read_metrics(two_dir), read_metrics(one_dir)
    _assert_same_metrics(two, one)
    _assert_same_metrics(read_metrics(two_dir, "eval/"), read_metrics(one_dir, "eval/"))
    assert one[3]["train/kl"] > 0 and one[3]["train/reward_std"] > 0  # the reference and the rewards were in play
    _assert_same_weights(_weights(two_dir), _weights(one_dir))
