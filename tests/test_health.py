"""Non-finite weights are never checkpointed; a diverging loss is reported."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import cli, run_events
from jaxalign.config import load_config
from jaxalign.health import DivergenceError, DivergenceWatch, HealthConfig, all_finite
from tests.train_fixtures import finished_checkpoints, read_metrics, tiny_run_config, write_config


def _train_main(config_path, *overrides, capsys):
    code = cli.main(["train", str(config_path), *[arg for o in overrides for arg in ("--set", o)]])
    return code, capsys.readouterr().err


def test_all_finite_checks_every_float_leaf():
    assert bool(all_finite({"a": jnp.ones(3), "count": jnp.int32(4)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": (jnp.array([1.0, jnp.inf]),)}))
    assert bool(all_finite({}))


def test_weights_that_become_inf_are_never_saved_and_the_last_finite_checkpoint_is_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=2, eval_batches=1,
                                                                checkpoint={"every_steps": 1}))
    assert _train_main(config, capsys=capsys)[0] == 0
    assert finished_checkpoints(run_dir) == [1, 2]
    # lr=1e39: the first update overflows float32, while the loss (computed before the update) is finite.
    code, err = _train_main(config, "optim.lr=1e39", "optim.warmup_steps=0", "max_steps=5", capsys=capsys)
    assert code == 1, err
    assert "jaxalign: error: the updated weights or optimizer state became NaN or inf by optimizer step 3" in err
    assert "last finite checkpoint is step 2" in err and "Traceback" not in err
    assert finished_checkpoints(run_dir) == [1, 2]
    assert [event["kind"] for event in run_events.problems(run_dir)] == ["non_finite"]


def test_inf_weights_on_the_first_step_leave_no_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=3, eval_batches=1,
                                                                checkpoint={"every_steps": 1}))
    code, err = _train_main(config, "optim.lr=1e39", "optim.warmup_steps=0", capsys=capsys)
    assert code == 1 and "no checkpoint was saved before it" in err, err
    assert finished_checkpoints(run_dir) == []


def test_divergence_watch_warns_once_per_crossing_and_can_stop():
    events = []
    watch = DivergenceWatch(HealthConfig(divergence_factor=10), lambda *e, **f: events.append((e, f)))
    assert watch.observe(1, 0.5) == {"health/loss_ratio": 1.0}
    assert watch.observe(2, 4.0)["health/loss_ratio"] == pytest.approx(8.0) and not events
    watch.observe(3, 6.0)
    watch.observe(4, 7.0)
    assert [e[0][:2] for e in events] == [("loss_diverging", events[0][0][1])] and events[0][0][2] == 3
    assert DivergenceWatch(HealthConfig(divergence_factor=0)).observe(1, 1.0) == {}
    assert DivergenceWatch(HealthConfig()).observe(1, -0.3) == {}  # PPO-like losses: no baseline
    stopping = DivergenceWatch(HealthConfig(divergence_factor=2, stop_on_divergence=True))
    stopping.observe(1, 1.0)
    with pytest.raises(DivergenceError, match="diverging.*step 2.*stopping"):
        stopping.observe(2, 3.0)
    with pytest.raises(ValueError, match="divergence_factor"):
        HealthConfig(divergence_factor=0.5)


def test_a_diverging_loss_warns_loudly_and_shows_in_metrics_and_events(tmp_path, capsys):
    from jaxalign.trainer import Trainer

    run_dir = tmp_path / "run"
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_run_config(
        run_dir, max_steps=4, eval_batches=1, export=False, checkpoint={"every_steps": 0})))
    trainer = Trainer(cfg)
    real_step, calls = trainer.train_step, []

    def blowing_up(state, batch, frozen):  # from the 3rd step on the loss is 1000x larger
        state, metrics = real_step(state, batch, frozen)
        calls.append(1)
        return state, {**metrics, "loss": metrics["loss"] * (1000.0 if len(calls) >= 3 else 1.0)}

    trainer.train_step = blowing_up
    assert trainer.run()["step"] == 4  # warn, not stop, by default
    err = capsys.readouterr().err
    assert err.count("the loss is diverging") == 1 and "step 3" in err
    ratios = {step: values["train/health/loss_ratio"] for step, values in read_metrics(run_dir).items()}
    assert ratios[1] == 1.0 and ratios[3] > 100
    assert [event["kind"] for event in run_events.problems(run_dir)] == ["loss_diverging"]
    np.testing.assert_allclose(run_events.problems(run_dir)[0]["ratio"], ratios[3], rtol=1e-6)
