"""Multi-process start-up: detection rules (no cluster -> no init) and a real
two-process CPU run over loopback with gloo collectives."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign import distributed
from jaxalign.checkpoint import Checkpointer, CheckpointConfig, DataStateMismatchError

REPO = Path(__file__).resolve().parent.parent
CLUSTER_VARS = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_STEP_NODELIST",
    "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
    "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "KUBERNETES_SERVICE_HOST",
    "JOB_COMPLETION_INDEX",
)


@pytest.fixture
def init_calls(monkeypatch):
    """Clears cluster variables and records jax.distributed.initialize calls instead of making them."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_tpu_chips_present", lambda: False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    return calls


def test_laptop_stays_single_process(init_calls):
    assert distributed.cluster_hint() is None
    assert distributed.initialize() is False
    assert init_calls == []


def test_one_task_slurm_job_stays_single_process(init_calls, monkeypatch):
    for name, value in dict(SLURM_JOB_ID="12", SLURM_STEP_NODELIST="n1", SLURM_NTASKS="1",
                            SLURM_PROCID="0", SLURM_LOCALID="0").items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_hint() == "SLURM"
    assert distributed.initialize() is True
    assert init_calls == [dict(coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None)]


def test_explicit_arguments_and_env_are_passed_on(init_calls, monkeypatch):
    assert distributed.initialize("10.0.0.1:1234", num_processes=4, process_id=2) is True
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.initialize() is True
    assert init_calls[0] == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
                                 local_device_ids=None)
    assert init_calls[1]["num_processes"] == 4 and init_calls[1]["process_id"] == 3


def test_already_initialized_is_a_no_op(init_calls, monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0) is True
    assert init_calls == []


def test_single_process_helpers():
    assert distributed.process_count() == 1 and distributed.process_index() == 0
    assert distributed.is_main_process()
    assert distributed.main_process_decides("x", True) is True
    assert distributed.any_process_requested("y", False) is False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_reduce_agree_and_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(REPO))
    coordinator = f"127.0.0.1:{_free_port()}"
    worker = str(Path(__file__).with_name("_two_process_worker.py"))
    procs = [subprocess.Popen([sys.executable, worker, coordinator, str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, f"worker failed:\n{err[-4000:]}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = [json.loads(line[len("RESULT "):]) for out in outputs for line in out.splitlines()
               if line.startswith("RESULT ")]
    assert sorted(r["process_id"] for r in results) == [0, 1]
    for r in results:
        assert r["joined"] and r["process_count"] == 2 and r["devices"] == [4, 2]
        assert r["is_main"] == (r["process_id"] == 0)
        assert r["total"] == r["psum"] == 18.0  # 2 rows x 3 of 1s + 2 rows x 3 of 2s
        assert r["due"] is True  # process 0's clock decided for both
        assert r["stop_nobody"] is False
    # One process asked to stop: both stop, at the same call.
    assert results[0]["first_stop_call"] == results[1]["first_stop_call"] is not None
    for r in results:
        assert r["saved"] is True
        assert r["restored_position"] == 10 + r["process_id"]  # each its own iterator state
        assert r["config"] == {"run": "two-process"}
        assert r["restored_rows"] == [[2.0] * 3, [2.0] * 3, [4.0] * 3, [4.0] * 3]

    # The same checkpoint in this one-process, 8-device run: the data state does not fit...
    checkpointer = Checkpointer(CheckpointConfig(dir=str(tmp_path / "ckpt")), tmp_path)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("fsdp",))
    abstract = {"rows": jax.ShapeDtypeStruct((4, 3), np.float32, sharding=NamedSharding(mesh, P())),
                "step": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P()))}

    class Iterator:
        def get_state(self):
            return {}

        def set_state(self, state):
            raise AssertionError("must not be called")

    with pytest.raises(DataStateMismatchError, match=r"saved by 2 process\(es\), but this run has 1"):
        checkpointer.restore(abstract_state=abstract, data_iterator=Iterator())
    # ...but the model state restores onto another device count when the data is reset.
    state, _ = checkpointer.restore(abstract_state=abstract, data_iterator=Iterator(), restore_data=False)
    checkpointer.close()
    np.testing.assert_array_equal(np.asarray(state["rows"]), np.repeat([[2.0], [2.0], [4.0], [4.0]], 3, axis=1))
    assert int(state["step"]) == 7
