"""Saves checkpoints in a loop until killed; tests/test_checkpoint.py SIGKILLs it mid-save.

Usage: python _save_loop_worker.py RUN_DIR
The state at step s is filled with s, so a restored checkpoint can be checked.
"""

import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.checkpoint import Checkpointer, CheckpointConfig
from jaxalign.sharding import MeshConfig, make_mesh


class Position:
    def __init__(self) -> None:
        self.index = 0

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = state["index"]


def main() -> None:
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1))
    sharding = NamedSharding(mesh, P("fsdp"))
    checkpointer = Checkpointer(CheckpointConfig(keep=0), sys.argv[1])
    position = Position()
    for step in range(1, 100_000):
        position.index = step
        # A few MB per save, so the kill usually lands while files are being written.
        state = {"w": jax.device_put(jnp.full((8, 256, 256), step, jnp.float32), sharding),
                 "step": jax.device_put(jnp.asarray(step), NamedSharding(mesh, P()))}
        checkpointer.save(step, state, position, {"step": step}, force=True)
        print(f"saved {step}", flush=True)


if __name__ == "__main__":
    main()
