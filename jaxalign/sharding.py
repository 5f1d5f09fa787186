"""Device mesh, logical axis rules, and the shardings of parameters and batches.

Model code names its parameter axes logically (``embed``, ``mlp``, ``heads``,
``kv_heads``, ``vocab``, ...). This module maps those names to the mesh axes
``data``, ``fsdp`` and ``tensor`` so that changing parallelism is a config
change, never a model change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
    "positions": None,
}


@dataclasses.dataclass
class MeshConfig:
    """Sizes of the mesh axes; one of them may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Overrides of DEFAULT_RULES, e.g. {"vocab": None}.
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)


def _resolve_axis_sizes(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(1 for s in sizes if s == -1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(_mesh_error(sizes, num_devices))
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(_mesh_error(sizes, num_devices))
    return tuple(sizes)  # type: ignore[return-value]


def _mesh_error(sizes: Sequence[int], num_devices: int) -> str:
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    shown = dict(zip(MESH_AXES, sizes))
    return (
        f"mesh {shown} does not fit {num_devices} device(s): the product of data x fsdp x tensor "
        f"must equal {num_devices}. Each axis size must be one of {divisors}; set one axis to -1 "
        f"to take the remaining devices (e.g. mesh.data=-1 mesh.fsdp=1 mesh.tensor=1)."
    )


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices)."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    sizes = _resolve_axis_sizes(cfg, len(devices))
    try:
        device_grid = jax.experimental.mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # non-TPU topologies, fake CPU devices: plain reshape is right
        device_grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_grid, MESH_AXES)


def rules_from(cfg: MeshConfig | None) -> dict[str, Any]:
    rules = dict(DEFAULT_RULES)
    if cfg is not None:
        rules.update(cfg.rules)
    return rules


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec.

    With ``shape`` and ``mesh`` given, a dimension whose size the mesh axes do
    not divide is replicated instead (e.g. 2 kv heads over tensor=4), and a
    mesh axis is never used twice in one spec.
    """
    if not logical_axes:
        return PartitionSpec()
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(logical_axes):
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes and shape[dim] % math.prod(mesh.shape[a] for a in axes):
                axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(
    mesh: Mesh,
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    rules: Mapping[str, Any] | None = None,
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (row) dimension split over ``data`` x ``fsdp``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def batch_divisor(mesh: Mesh) -> int:
    """Rows of a global batch must be a multiple of this."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's rows into global arrays on the batch sharding.

    Every process passes arrays of the same shape; the global leading dimension
    is the sum over processes.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
