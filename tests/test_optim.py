import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign.compilation import CompileCounter
from jaxalign.optim import OptimConfig, build_optimizer, learning_rate_schedule, on_host


def test_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    schedule = learning_rate_schedule(cfg, total_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-4, rel=1e-4)


def test_the_logged_learning_rate_is_the_schedule_compiled_once():
    cfg = OptimConfig(lr=1e-3, warmup_steps=7, schedule="cosine", min_lr_ratio=0.1)
    schedule = learning_rate_schedule(cfg, total_steps=53)
    counter = CompileCounter()
    logged = on_host(schedule)
    values = [logged(step) for step in range(0, 60, 3)]
    assert counter.metrics()["perf/compiles"] <= 1  # called eagerly, each of its ops compiles
    assert all(type(value) is float for value in values)
    assert values == pytest.approx([float(schedule(step)) for step in range(0, 60, 3)], rel=1e-6)  # fused: ulps


def test_weight_decay_skips_vectors():
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, max_grad_norm=0.0, schedule="constant")
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    optimizer = build_optimizer(cfg, total_steps=10)
    state = optimizer.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, state, params)
    assert np.allclose(updates["bias"], 0.0)
    assert np.allclose(updates["kernel"], -0.1 * 0.5)


def test_accumulation_matches_one_big_step():
    cfg = OptimConfig(lr=0.1, schedule="constant", max_grad_norm=0.0, grad_accum_steps=2)
    single = OptimConfig(lr=0.1, schedule="constant", max_grad_norm=0.0)
    params = {"w": jnp.array([1.0, 2.0])}
    g1, g2 = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 3.0])}
    accumulating = build_optimizer(cfg, 10)
    state = accumulating.init(params)
    updates, state = accumulating.update(g1, state, params)
    assert np.allclose(updates["w"], 0.0)  # no update until the second micro-batch
    updates, state = accumulating.update(g2, state, params)
    plain = build_optimizer(single, 10)
    expected, _ = plain.update({"w": jnp.array([0.5, 1.5])}, plain.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)


def test_bad_values_are_rejected():
    with pytest.raises(ValueError, match="optim.schedule"):
        OptimConfig(schedule="step")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        OptimConfig(grad_accum_steps=0)
