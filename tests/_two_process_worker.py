"""One of the two CPU processes that tests/test_distributed.py starts.

Usage: python _two_process_worker.py COORDINATOR PROCESS_ID OUT_DIR
Prints one JSON line of results; the parent test checks them.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import distributed
from jaxalign.checkpoint import Checkpointer, CheckpointConfig
from jaxalign.sharding import MeshConfig, batch_sharding, make_mesh, replicated


class CountingIterator:
    def __init__(self, position: int) -> None:
        self.position = position

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = state["position"]


def main() -> None:
    coordinator, process_id, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    joined = distributed.initialize(coordinator, num_processes=2, process_id=process_id)
    joined_again = distributed.initialize(coordinator, num_processes=2, process_id=process_id)

    mesh = make_mesh(MeshConfig(data=-1))  # all 4 devices of both processes
    rows = np.full((2, 3), process_id + 1, np.float32)  # this process's 2 rows
    global_rows = jax.make_array_from_process_local_data(batch_sharding(mesh), rows)
    total = jax.jit(jnp.sum, out_shardings=replicated(mesh))(global_rows)
    psum = jax.jit(
        jax.shard_map(lambda x: jax.lax.psum(x.sum(), ("data", "fsdp")), mesh=mesh,
                      in_specs=P(("data", "fsdp")), out_specs=P())
    )(global_rows)

    # Process 0's clock decides; process 1 "thinks" nothing is due.
    checkpointer = Checkpointer(CheckpointConfig(dir=f"{out_dir}/ckpt", every_minutes=1.0), out_dir)
    due = checkpointer.should_save(3, now=1e12 if process_id == 0 else 0.0)
    stop_nobody = distributed.any_process_requested("stop", False)
    # Process 1 asks to stop; everyone must see it at the same call (a call or two later at most).
    first_stop_call = None
    for call in range(100):
        if distributed.any_process_requested("stop", process_id == 1):
            first_stop_call = call
            break
        time.sleep(0.05)

    iterator = CountingIterator(10 + process_id)
    # Multi-process saves need global arrays: even a scalar must live on the mesh.
    state = {"rows": global_rows * 2, "step": jax.device_put(jnp.asarray(7), replicated(mesh))}
    saved = checkpointer.save(5, state, iterator, {"run": "two-process"}, force=True)
    checkpointer.wait()
    iterator.position = -1
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, config = checkpointer.restore(abstract_state=abstract, data_iterator=iterator)
    checkpointer.close()
    rows_back = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))(restored["rows"])

    print("RESULT " + json.dumps({
        "process_id": process_id,
        "joined": joined and joined_again,
        "process_count": distributed.process_count(),
        "is_main": distributed.is_main_process(),
        "devices": [jax.device_count(), jax.local_device_count()],
        "total": float(total),
        "psum": float(psum),
        "due": due,
        "stop_nobody": stop_nobody,
        "first_stop_call": first_stop_call,
        "saved": saved,
        "restored_rows": np.asarray(rows_back.addressable_data(0)).tolist(),
        "restored_position": iterator.position,
        "config": config,
    }), flush=True)


if __name__ == "__main__":
    main()
