"""PPO replays a rollout recorded before it moved onto the rollout layer
(tests/data/ppo_fixed_rollout.npz, written by tests/data/record_ppo_fixture.py at commit c23f918):
the train step on the stored rollout gives the same parameters, optimizer state and metrics within
1e-6. The same prompts and key give the rollout in tests/data/ppo_rollout_per_row_keys.npz
(tests/data/record_ppo_rollout.py), re-recorded when the sampler gave each row its own key: the
sampled tokens changed then by design, so the c23f918 rollout no longer comes out of the sampler."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign.config import TrainConfig
from jaxalign.configlib import from_dict
from jaxalign.sharding import shard_batch
from jaxalign.trainer import Trainer

FIXTURE = Path(__file__).with_name("data") / "ppo_fixed_rollout.npz"
ROLLOUT = FIXTURE.with_name("ppo_rollout_per_row_keys.npz")
sys.path.insert(0, str(FIXTURE.parent))
from record_ppo_fixture import fixture_config  # noqa: E402

TOLERANCE = 1e-6


def _restore(tree, stored, prefix: str):
    """``tree`` with every leaf replaced by the stored array of the same path (on the leaf's sharding)."""
    def leaf(path, old):
        new = stored[prefix + jax.tree_util.keystr(path)]
        assert new.shape == old.shape and new.dtype == old.dtype, (path, new.shape, old.shape)
        return jax.device_put(new, old.sharding)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def _close(actual, expected, name: str, tolerance: float = TOLERANCE) -> None:
    actual = np.asarray(jax.device_get(actual))
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance, err_msg=name)


def replayed(run_dir: Path):
    """(trainer, state, frozen, stored) restored from the fixture, the trainer writing to ``run_dir``."""
    # The starting-policy reference moved from frozen['ref'] to frozen['ref_trained'] when PPO built its
    # policy through the trainable-subset seam (jaxalign/algos/policy.py); the arrays are the same.
    stored = {name.replace("frozen['ref']", "frozen['ref_trained']", 1): value for name, value in np.load(FIXTURE).items()}
    trainer = Trainer(from_dict(TrainConfig, fixture_config(str(run_dir))))
    state = trainer.state
    state = state.replace(
        params=_restore(state.params, stored, "init"), opt_state=_restore(state.opt_state, stored, "opt"),
        step=jax.device_put(stored["step"], state.step.sharding), rng=jax.device_put(stored["rng"], state.rng.sharding),
        extra={"kl_coef": jax.device_put(stored["kl_coef"], state.extra["kl_coef"].sharding)})
    frozen = _restore(trainer.algo.frozen, stored, "frozen")
    return trainer, state, frozen, stored


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    return replayed(tmp_path_factory.mktemp("run"))


def rollout_from_stored_prompts(run_dir: Path) -> dict:
    """The rollout the stored prompts, parameters and key give on the current code."""
    return _rollout(*replayed(run_dir))


def _rollout(trainer, state, frozen, stored) -> dict:
    prompts = shard_batch(_stored(stored, "prompts/"), trainer.mesh)
    return trainer.algo.rollout(state, prompts, frozen, "train", 0)[0]


def _stored(stored: dict, prefix: str) -> dict:
    return {name[len(prefix):]: value for name, value in stored.items() if name.startswith(prefix)}


def test_same_prompts_and_key_give_the_stored_rollout(replay):
    stored = replay[3]
    rollout = _rollout(*replay)
    expected = dict(np.load(ROLLOUT))
    assert set(_stored(stored, "rollout/")) <= set(expected) <= set(rollout), set(expected) ^ set(rollout)
    for name, value in expected.items():
        _close(rollout[name], value, f"rollout/{name}")


def test_train_step_on_the_stored_rollout_gives_the_stored_result(replay):
    trainer, state, frozen, stored = replay
    rollout = shard_batch(_stored(stored, "rollout/"), trainer.mesh)
    state = jax.tree.map(lambda x: x.copy(), state)  # the step donates it
    new_state, metrics = trainer.train_step(state, rollout, frozen)
    metrics = jax.device_get(metrics)
    for name, value in _stored(stored, "metrics/").items():
        _close(metrics[name], value, f"metrics/{name}")
    _close(new_state.extra["kl_coef"], stored["final_kl_coef"], "kl_coef")
    final = _stored(stored, "final")
    for path, leaf in jax.tree_util.tree_leaves_with_path(new_state.params):
        _close(leaf, final[jax.tree_util.keystr(path)], f"params{jax.tree_util.keystr(path)}")
