"""Multi-process start-up and the few cross-process questions the loop asks.

``initialize()`` joins the JAX distributed system when the arguments or the
environment say this process is one of several (TPU pod, SLURM, Open MPI,
Kubernetes, or ``JAX_COORDINATOR_ADDRESS``), and does nothing on a laptop:
``jax.distributed.initialize()`` without a cluster would wait for a
coordinator that never comes.

The agreement helpers (``main_process_decides``, ``any_process_requested``)
talk over the coordination service's key-value store: host-only round trips
that never wait on the device queue, unlike a device collective would.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
from typing import Sequence

import jax

_log = logging.getLogger("jaxalign.distributed")

# How long a process waits for the main process's decision (it may be a step behind).
AGREEMENT_TIMEOUT_MS = 10 * 60 * 1000
_KEY_PREFIX = "jaxalign"
_call_counters: dict[str, itertools.count] = {}


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _tpu_chips_present() -> bool:
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def cluster_hint() -> str | None:
    """Names the multi-process environment this process runs in, or None.

    Only environments that mean "more than one process" count: a one-task SLURM
    job or a lone Kubernetes pod is a single process.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in env for v in slurm_vars) and (_int_env("SLURM_NTASKS") or 1) > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in env and (_int_env("OMPI_COMM_WORLD_SIZE") or 2) > 1:
        return "Open MPI"
    tpu_hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in tpu_hosts.split(",") if h.strip()]) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU (GKE / multislice)"
    if _tpu_chips_present() and importlib.util.find_spec("libtpu") is not None:
        # A Cloud TPU VM: jax asks the metadata server for the workers (works on one host too).
        return "Cloud TPU VM"
    if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env and importlib.util.find_spec("kubernetes"):
        return "Kubernetes indexed job"
    return None


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU need an implementation; gloo ships with jaxlib."""
    missing = object()
    current = getattr(jax.config, "jax_cpu_collectives_implementation", missing)
    if current is missing:  # option renamed or removed in a later jax
        return
    if current in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
) -> bool:
    """Joins the JAX distributed system if this is a multi-process run.

    Explicit arguments win; missing ones come from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` or jax's own cluster detection.
    With no arguments and no cluster in the environment, nothing happens.
    Call it before anything touches a jax device. Safe to call twice.

    Returns True when the distributed system is up (now or already).
    """
    if jax.distributed.is_initialized():
        return True
    num_processes = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
    explicit = coordinator_address is not None or (num_processes or 1) > 1 or process_id is not None
    hint = cluster_hint()
    if not explicit and hint is None:
        _log.debug("no cluster detected: running as a single process")
        return False
    if num_processes == 1 and coordinator_address is None and hint is None:
        return False
    _use_cpu_collectives()
    _log.info(
        "joining the distributed system (%s): coordinator=%s num_processes=%s process_id=%s",
        hint or "explicit arguments", coordinator_address or "auto", num_processes, process_id,
    )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return True


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0: the one that writes logs, metrics and shared files.

    It asks jax, which starts the backends: call ``initialize()`` before it.
    """
    return jax.process_index() == 0


def _client():
    """The coordination-service client, or None in a single-process run."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return None
    from jax._src import distributed as jax_distributed  # the one handle jax offers; Orbax uses it too

    return jax_distributed.global_state.client


def _next_key(name: str) -> str:
    # Every process calls these helpers the same number of times, so a
    # per-name call counter gives every call one key shared by all processes.
    counter = _call_counters.setdefault(name, itertools.count())
    return f"{_KEY_PREFIX}/{name}/decision/{next(counter)}"


def main_process_decides(name: str, decision: bool) -> bool:
    """Returns process 0's ``decision`` on every process.

    For choices read from a local clock (is a checkpoint due?) that every
    process must make identically. All processes must call it at the same point.
    """
    client = _client()
    if client is None:
        return decision
    key = _next_key(name)
    if jax.process_index() == 0:
        client.key_value_set(key, "1" if decision else "0")
        return decision
    return client.blocking_key_value_get(key, AGREEMENT_TIMEOUT_MS) == "1"


_requested: set[str] = set()


def any_process_requested(name: str, requested_here: bool) -> bool:
    """True on every process once any process has asked for ``name``.

    Requests are sticky (a stop request is never withdrawn). All processes
    must call it at the same point; every process gets the same answer from
    the same call, though a request may first show a call or two after it
    was made (process 0 may have decided that call already).
    """
    client = _client()
    if client is None:
        return requested_here
    request_prefix = f"{_KEY_PREFIX}/{name}/request/"
    if requested_here and name not in _requested:
        client.key_value_set(f"{request_prefix}{jax.process_index()}", "1", allow_overwrite=True)
        _requested.add(name)
    seen = requested_here
    if jax.process_index() == 0:
        seen = seen or bool(client.key_value_dir_get(request_prefix))
    return main_process_decides(name, seen)


def agree_on_shape(local_shape: Sequence[int]) -> tuple[int, ...]:
    """The elementwise maximum of every process's ``local_shape``.

    Packing picks batch shapes from local data, while a global array needs the
    same local shape on every process: each pads up to the agreed one.
    """
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(local_shape, dtype=np.int64))
    return tuple(int(v) for v in np.max(np.asarray(gathered).reshape(-1, len(local_shape)), axis=0))


def all_processes(flag: bool) -> bool:
    """True on every process when ``flag`` is True on all of them.

    For branches that lead into collectives (e.g. "is the cache here?"): every
    process must take the same one. All processes must call it at the same point.
    """
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([flag], dtype=np.int32))))
