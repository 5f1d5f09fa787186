"""Test-wide set-up: 8 fake CPU devices stand in for a mesh.

Set before jax is imported anywhere, so every test sees the same devices.
Single-device tests build their mesh from ``jax.devices()[:1]``.
"""

import os

COLLECTIVE_PATIENCE = "--xla_cpu_collective_call_terminate_timeout_seconds=900"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The 8 fake devices are 8 threads meeting at every collective. On a loaded machine one of them
# can be descheduled past XLA:CPU's 40 s termination timeout, which aborts the whole process
# ("Termination timeout for `all reduce` ... exceeded"): measured at load ~20 on 2 cores.
if "collective_call_terminate_timeout" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + COLLECTIVE_PATIENCE

# Trainers turn on JAX's persistent compilation cache (jaxalign.compilation); tests keep it
# in one folder per session, shared by the tests of that session, never in the user's cache.
if "JAXALIGN_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAXALIGN_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxalign-test-cache-")
    atexit.register(shutil.rmtree, os.environ["JAXALIGN_CACHE_DIR"], ignore_errors=True)


# Workers for pyproject's `-n auto` (pytest-xdist). Most of a test's time is tracing and
# compiling, which run on one core, so one worker per core keeps a 2-core machine busy (the
# quick subset 9 min 5 s -> 6 min 23 s, the full suite 23 -> 17 min; docs/dev-notes/suite.md).
# Each worker holds jax, torch and its tests' compiled programs (5.3 GB at most in a full run),
# and the multi-process tests start two more processes beside it, so memory caps the count too.
WORKER_GIB = 6


def pytest_xdist_auto_num_workers(config) -> int:
    # The cores this process may run on (a container's CPU set); macOS has no affinity call.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cores, int(memory_gib // WORKER_GIB)))
