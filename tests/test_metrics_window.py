"""The trainer's metrics window: sums and finite flags on device, and the host kept at most
one step ahead of the devices (more queued work can deadlock XLA:CPU's collectives)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.health import FINITE_STATE_KEY
from jaxalign.trainer import _MetricsWindow


def _metrics(loss: float, **extra: float) -> dict:
    return {"loss": jnp.float32(loss), **{name: jnp.float32(value) for name, value in extra.items()}}


def test_read_gives_means_over_the_window_and_counts_tokens():
    window = _MetricsWindow()
    window.add(_metrics(1.0, accuracy=0.5), jnp.array([[1, 1, 0], [2, 0, 0]]))
    window.add(_metrics(3.0, accuracy=1.0), jnp.array([[1, 1, 1], [1, 2, 2]]))
    means = window.read()
    assert means["loss"] == pytest.approx(2.0) and means["accuracy"] == pytest.approx(0.75)
    assert means["tokens_per_s"] > 0
    window.add(_metrics(5.0, accuracy=0.0), jnp.array([[1, 0, 0]]))
    assert window.read()["loss"] == pytest.approx(5.0)  # a new window after each read


def test_finite_flags_remember_a_bad_step_from_an_earlier_window():
    window = _MetricsWindow()
    assert window.finite is None
    window.add(_metrics(float("nan")), jnp.ones((1, 2), jnp.int32))
    window.read()
    window.add(_metrics(1.0), jnp.ones((1, 2), jnp.int32))
    assert not bool(window.finite) and not bool(window.loss_finite)
    # Updated state checked (health.FINITE_STATE_KEY): a finite loss with inf weights.
    window = _MetricsWindow()
    window.add({"loss": jnp.float32(1.0), FINITE_STATE_KEY: jnp.float32(0.0)}, jnp.ones((1, 2), jnp.int32))
    assert not bool(window.finite) and bool(window.loss_finite)
    assert FINITE_STATE_KEY not in window.read()


def test_the_host_never_runs_more_than_one_step_ahead_of_the_devices():
    """A step far slower on the devices than on the host: without the window's wait the host
    queues all ten steps at once (and, on XLA:CPU, past 32 computations a collective can hang)."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))

    @jax.jit
    def slow_step(x):
        y = jax.lax.fori_loop(0, 10, lambda _, y: jnp.tanh(y @ (y.T @ y)) * 0.01, x)  # ~50 ms a step
        return {"loss": jnp.mean(y)}  # the mean is an all-reduce over the devices

    x = jax.device_put(np.random.default_rng(0).normal(size=(8 * 128, 256)).astype(np.float32), rows)
    segment_ids = jax.device_put(np.ones((8, 4), np.int32), rows)
    jax.block_until_ready(slow_step(x))  # compiled before timing matters
    window, outputs, queued = _MetricsWindow(), [], []
    for _ in range(10):
        queued.append(sum(not out["loss"].is_ready() for out in outputs))
        outputs.append(slow_step(x))
        window.add(outputs[-1], segment_ids)
    assert max(queued) <= 1, queued
    assert np.isfinite(window.read()["loss"])
