"""Where each parameter lives: logical axis names (flax metadata) -> shardings.

Parameters carry their logical axes as ``out_sharding`` metadata (see
``jaxalign.models.layers.param``); ``jaxalign.sharding.logical_sharding``
maps them onto the mesh. Without a mesh everything goes to one device.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, Sharding, SingleDeviceSharding

from jaxalign.sharding import logical_sharding


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names of a parameter, e.g. ``("embed", "mlp")``."""
    return variable.get_metadata().get("out_sharding")


def variable_sharding(
    variable: nnx.Variable, mesh: Mesh | None, rules: Mapping[str, Any] | None = None
) -> Sharding:
    """Target sharding of one (possibly abstract) variable."""
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    value = variable.get_value()
    return logical_sharding(mesh, logical_axes(variable), tuple(value.shape), rules)


def state_shardings(state: nnx.State, mesh: Mesh | None, rules: Mapping[str, Any] | None = None) -> nnx.State:
    """A state of the same structure holding each variable's target ``Sharding``.

    Usable as ``in_shardings``/``out_shardings`` for the matching state in ``jax.jit``.
    """
    return nnx.map_state(lambda _, v: v.replace(variable_sharding(v, mesh, rules)), state)


def shard_model(model: nnx.Module, mesh: Mesh | None, rules: Mapping[str, Any] | None = None) -> nnx.Module:
    """A copy of ``model`` with every parameter placed on its target sharding."""
    graphdef, state = nnx.split(model)
    placed = jax.device_put(state, state_shardings(state, mesh, rules))
    return nnx.merge(graphdef, placed)


def place(array: np.ndarray, variable: nnx.Variable, mesh: Mesh | None, rules: Mapping[str, Any] | None = None) -> jax.Array:
    """Puts a host array (or view) on the variable's sharding, converting dtype one shard at a time.

    Each process copies only the shards its own devices hold.
    """
    target = variable.get_value()
    if tuple(array.shape) != tuple(target.shape):
        raise ValueError(f"internal: host array shape {array.shape} != parameter shape {target.shape}")
    sharding = variable_sharding(variable, mesh, rules)
    dtype = np.dtype(target.dtype)
    return jax.make_array_from_callback(target.shape, sharding, lambda index: np.asarray(array[index], dtype=dtype))
