"""Checkpointer: sharded round trips, another mesh, data iterator position,
retention, save timing, atomicity, and the process-count error."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.struct
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import checkpoint as ckpt
from jaxalign.checkpoint import Checkpointer, CheckpointConfig, DataStateMismatchError
from jaxalign.sharding import MeshConfig, make_mesh


@flax.struct.dataclass
class State:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array
    extra: dict


def make_state(mesh) -> State:
    """Params sharded on every mesh axis that is > 1, adam moments alike, replicated scalars."""
    spec = P(("data", "fsdp"), "tensor")
    params = {
        "embed": jax.random.normal(jax.random.key(1), (16, 8), jnp.float32),
        "layer": {"w": jnp.arange(64, dtype=jnp.bfloat16).reshape(8, 8), "b": jnp.linspace(-1, 1, 8)},
    }
    params = jax.device_put(params, {"embed": NamedSharding(mesh, spec),
                                     "layer": {"w": NamedSharding(mesh, spec), "b": NamedSharding(mesh, P())}})
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-zero moments, count=1
    replicated = NamedSharding(mesh, P())
    return State(step=jax.device_put(jnp.asarray(3, jnp.int32), replicated), params=params, opt_state=opt_state,
                 rng=jax.device_put(jax.random.key(7), replicated), extra={})


def abstract_of(tree, sharding_fn=None):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x) if sharding_fn else x.sharding), tree)


def host_values(tree):
    def to_host(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)
    return jax.tree.map(to_host, tree)


def assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(host_values(a))
    leaves_b, tree_b = jax.tree.flatten(host_values(b))
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def grain_iterator(seed=3):
    return iter(grain.MapDataset.range(100).shuffle(seed=seed).to_iter_dataset().batch(4))


@pytest.fixture
def mesh8():
    return make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))


def test_round_trip_is_bitwise_and_survives_donation(tmp_path, mesh8):
    state = make_state(mesh8)
    expected = host_values(state)
    abstract = abstract_of(state)
    with Checkpointer(CheckpointConfig(), tmp_path) as checkpointer:
        assert checkpointer.directory == tmp_path / "checkpoints"
        assert checkpointer.save(10, state, None, {"lr": 1e-3, "run_dir": tmp_path}, force=True)
        # Async save returned: the caller may now donate/free the buffers.
        jax.tree.map(lambda x: x.delete(), state)
        checkpointer.wait()
        restored, config = checkpointer.restore(abstract_state=abstract)
    assert_bitwise_equal(restored, expected)
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, abstract)
    assert config == {"lr": 1e-3, "run_dir": str(tmp_path)}
    assert jax.random.key_data(restored.rng).tolist() == jax.random.key_data(jax.random.key(7)).tolist()


def test_restore_onto_another_mesh_and_device_count(tmp_path, mesh8):
    state = make_state(mesh8)
    with Checkpointer(CheckpointConfig(async_save=False), tmp_path) as checkpointer:
        checkpointer.save(1, state, None, None, force=True)
    mesh4 = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), devices=jax.devices()[:4])

    def on_mesh4(x):
        return NamedSharding(mesh4, P("data", "tensor") if x.ndim == 2 else P())

    with Checkpointer(CheckpointConfig(), tmp_path) as reopened:  # a fresh run: new manager
        restored, config = reopened.restore(1, abstract_state=abstract_of(state, on_mesh4))
    assert config is None
    assert_bitwise_equal(restored, state)
    embed = restored.params["embed"]
    assert embed.sharding == NamedSharding(mesh4, P("data", "tensor"))
    assert {d.id for d in embed.devices()} == {d.id for d in jax.devices()[:4]}


def test_data_iterator_resumes_with_the_same_batches(tmp_path, mesh8):
    state = make_state(mesh8)
    iterator = grain_iterator()
    for _ in range(5):
        next(iterator)
    with Checkpointer(CheckpointConfig(), tmp_path) as checkpointer:
        checkpointer.save(5, state, iterator, {}, force=True)
        # The saved position is the one at save() time, even while the write is in flight.
        expected = [next(iterator) for _ in range(3)]
    resumed = grain_iterator()
    with Checkpointer(CheckpointConfig(), tmp_path) as reopened:
        reopened.restore(abstract_state=abstract_of(state), data_iterator=resumed)
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "5" / "data").glob("*.json"))
    assert files == ["process_0-of-1.json"]


def test_keeps_the_last_k(tmp_path, mesh8):
    state = make_state(mesh8)
    with Checkpointer(CheckpointConfig(keep=2), tmp_path) as checkpointer:
        for step in range(1, 6):
            checkpointer.save(step, state, None, None, force=True)
        checkpointer.wait()
        assert checkpointer.all_steps() == [4, 5]
        assert checkpointer.latest_step() == 5
        assert not checkpointer.save(5, state, None, None, force=True)  # never overwrites a step
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "5"]


def test_should_save_on_steps_or_minutes_whichever_first(tmp_path, mesh8):
    by_steps = Checkpointer(CheckpointConfig(every_steps=10, every_minutes=0), tmp_path / "a")
    assert [s for s in range(0, 31) if by_steps.should_save(s, time.time())] == [10, 20, 30]
    by_steps.close()

    checkpointer = Checkpointer(CheckpointConfig(every_steps=100, every_minutes=2, async_save=False), tmp_path / "b")
    start = time.time()
    assert not checkpointer.should_save(1, start + 60)
    assert checkpointer.should_save(2, start + 121)  # minutes came first
    assert checkpointer.should_save(100, start + 1)  # steps came first
    state = make_state(mesh8)
    assert not checkpointer.save(3, state, None, None)  # not due: nothing written
    assert checkpointer.save(4, state, None, None, force=True)
    # The clock restarts at every save.
    assert not checkpointer.should_save(5, time.time() + 100)
    assert checkpointer.should_save(6, time.time() + 121)
    checkpointer.close()

    never = Checkpointer(CheckpointConfig(every_steps=0, every_minutes=0), tmp_path / "c")
    assert not any(never.should_save(s, time.time() + 1e9) for s in range(1, 50))
    never.close()
    with pytest.raises(ValueError, match="every_steps"):
        CheckpointConfig(every_steps=-1)


def test_interrupted_save_leaves_the_previous_checkpoint_latest(tmp_path, mesh8, monkeypatch):
    state = make_state(mesh8)
    checkpointer = Checkpointer(CheckpointConfig(async_save=False), tmp_path)
    checkpointer.save(1, state, grain_iterator(), {"n": 1}, force=True)

    def crash_mid_write(self, directory, args):
        (Path(directory) / "process_0-of-1.json").write_text('{"next_ind')  # half a file
        raise OSError("disk went away")

    monkeypatch.setattr(ckpt.DataStateHandler, "save", crash_mid_write)
    # No config item: Orbax starts items in name order, so "data" fails before any other write begins
    # (an aborted "config" write would leave an unawaited coroutine and a warning behind).
    with pytest.raises(OSError, match="disk went away"):
        checkpointer.save(2, state, grain_iterator(), None, force=True)
    monkeypatch.undo()
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.isdigit()]
    assert any("tmp" in name for name in leftovers), leftovers  # the partial save is in a temporary folder
    del checkpointer  # the "crashed" run; a new one starts

    reopened = Checkpointer(CheckpointConfig(), tmp_path)
    assert reopened.latest_step() == 1
    restored, config = reopened.restore(abstract_state=abstract_of(state), data_iterator=grain_iterator())
    assert_bitwise_equal(restored, state)
    assert config == {"n": 1}
    reopened.wait()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]  # temporary folder cleaned up
    reopened.close()


def test_process_count_mismatch_says_how_to_get_out(tmp_path, mesh8):
    state = make_state(mesh8)
    iterator = grain_iterator()
    next(iterator)
    with Checkpointer(CheckpointConfig(async_save=False), tmp_path) as checkpointer:
        checkpointer.save(1, state, iterator, {}, force=True)
    data_dir = tmp_path / "checkpoints" / "1" / "data"
    # As if a 4-process run had written it.
    (data_dir / "process_0-of-1.json").rename(data_dir / "process_0-of-4.json")
    for index in (1, 2, 3):
        (data_dir / f"process_{index}-of-4.json").write_text('{"next_index": 4}')
    fresh = grain_iterator()
    with Checkpointer(CheckpointConfig(), tmp_path) as reopened:
        with pytest.raises(DataStateMismatchError) as caught:
            reopened.restore(abstract_state=abstract_of(state), data_iterator=fresh)
        message = str(caught.value)
        assert "saved by 4 process(es)" in message and "this run has 1" in message
        assert "data.reset_iterator_on_restore=true" in message
        restored, _ = reopened.restore(abstract_state=abstract_of(state), data_iterator=fresh, restore_data=False)
    assert_bitwise_equal(restored, state)
    np.testing.assert_array_equal(next(fresh), next(grain_iterator()))  # data restarts from the beginning


def test_clear_errors(tmp_path, mesh8):
    with Checkpointer(CheckpointConfig(), tmp_path) as checkpointer:
        assert checkpointer.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            checkpointer.restore(abstract_state={})

        class Unserialisable:
            def get_state(self):
                return {"rng": object()}

        with pytest.raises(TypeError, match="JSON-serialisable"):
            checkpointer.save(1, make_state(mesh8), Unserialisable(), {}, force=True)


def test_saved_config_is_plain_json(tmp_path, mesh8):
    with Checkpointer(CheckpointConfig(async_save=False), tmp_path) as checkpointer:
        checkpointer.save(2, make_state(mesh8), None, {"model": {"path": Path("/m"), "layers": (1, 2)}}, force=True)
    files = list((tmp_path / "checkpoints" / "2" / "config").iterdir())
    assert [json.loads(f.read_text()) for f in files if f.suffix in ("", ".json")] == [
        {"model": {"path": "/m", "layers": [1, 2]}}]


def test_killed_mid_save_the_latest_checkpoint_still_restores(tmp_path):
    """A real crash: SIGKILL a process that saves (async) in a loop, then resume."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_save_loop_worker.py")), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in worker.stdout:
            if line.strip() == "saved 4" or time.monotonic() > deadline:
                break
        time.sleep(random.uniform(0.0, 0.2))
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL

    mesh = make_mesh(MeshConfig(data=1, fsdp=8))
    abstract = {"w": jax.ShapeDtypeStruct((8, 256, 256), jnp.float32, sharding=NamedSharding(mesh, P("fsdp"))),
                "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    with Checkpointer(CheckpointConfig(), tmp_path) as resumed:
        latest = resumed.latest_step()
        assert latest is not None and latest >= 3
        position = type("Position", (), {"set_state": lambda self, s: setattr(self, "state", s)})()
        state, config = resumed.restore(abstract_state=abstract, data_iterator=position)
    assert int(state["step"]) == latest and config == {"step": latest} and position.state == {"index": latest}
    assert float(jnp.min(state["w"])) == float(jnp.max(state["w"])) == latest
