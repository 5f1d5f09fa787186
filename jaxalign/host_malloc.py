"""glibc malloc settings that let XLA:CPU reuse its step buffers, applied by re-executing
the process at start.

Why: XLA:CPU allocates each execution's temp buffer (about 1 GB for the reward-model step
on HH-RLHF) with ``posix_memalign`` from one of its worker threads. glibc serves a block
that large from a fresh ``mmap`` and unmaps it on ``free``, so every step page-faults its
whole temp buffer back in: 262k minor faults and about 0.45 s of system time per step there.
``mallopt`` from inside the process cannot stop it: a worker thread's arena maps any block
over 64 MiB whatever ``M_MMAP_MAX`` says, and threads keep the arena they were given. So
the settings (one arena, no ``mmap``, no trimming) must be in the environment when the
process starts; ``reexec_with_tuned_malloc`` execs the same command line again with them.
The cost is memory: the process keeps what its steps once needed, plus blocks glibc could
not reuse in time (XLA frees asynchronously): +30% peak RSS for that reward model.

Applied only where it is measured to help: glibc, and jax on its CPU backend (no GPU or
TPU plugin installed, or ``JAX_PLATFORMS`` naming ``cpu`` first). Variables the user set
(any of ``SETTINGS`` or ``glibc.malloc.*`` tunables) are left alone;
``JAXALIGN_HOST_MALLOC=off`` opts out. 'Host malloc' in docs/benchmarks.md has the
measurements.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Mapping, Sequence

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",  # every thread allocates from the main arena, which can grow without mmap
    "MALLOC_MMAP_MAX_": "0",  # large blocks come from the heap, not a fresh mapping
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # freed memory stays mapped for the next step
}
SWITCH = "JAXALIGN_HOST_MALLOC"  # "off": leave malloc alone; "tuned": set by the re-exec
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def plan(environ: Mapping[str, str], libc: str, accelerator_plugins: Sequence[str]) -> tuple[dict[str, str], str]:
    """What to add to ``environ`` before the process starts, and why (one phrase).

    ``libc`` is the C library's name (``"glibc"``, or ``""`` when unknown);
    ``accelerator_plugins`` the installed jax GPU/TPU plugin packages. An empty
    dict means: start as is.
    """
    if environ.get(SWITCH) == "tuned":
        return {}, "tuned for XLA:CPU (" + " ".join(f"{k}={environ.get(k)}" for k in SETTINGS) + ")"
    if environ.get(SWITCH, "").strip().lower() in ("off", "0", "false", "no"):
        return {}, f"glibc's defaults ({SWITCH}={environ[SWITCH]})"
    if libc != "glibc":
        return {}, "the C library's defaults (not glibc)"
    user_set = [key for key in SETTINGS if key in environ]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        user_set.append("GLIBC_TUNABLES")
    if user_set:
        return {}, "as set in the environment (" + ", ".join(user_set) + ")"
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms[:1] not in ([], ["cpu"]) or (not platforms and accelerator_plugins):
        where = f"JAX_PLATFORMS={environ['JAX_PLATFORMS']}" if platforms else ", ".join(accelerator_plugins) + " installed"
        return {}, f"glibc's defaults (an accelerator backend: {where})"
    return {**SETTINGS, SWITCH: "tuned"}, "tuned for XLA:CPU"


def installed_accelerator_plugins() -> list[str]:
    """jax GPU/TPU plugin packages present, found without importing them."""
    return [name for name in ACCELERATOR_PLUGINS if importlib.util.find_spec(name) is not None]


def c_library() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").split()[0]  # "glibc 2.36"
    except (AttributeError, ValueError, OSError, IndexError):
        return ""


def describe() -> str:
    """One line for a run's log: how this process's malloc is set up."""
    added, why = plan(os.environ, c_library(), installed_accelerator_plugins())
    if added:  # a process started without the re-exec (the Python API, not the ``jaxalign`` command)
        why = "glibc's defaults (this process did not start through the jaxalign command; see 'Host malloc' in docs/benchmarks.md)"
    return f"host malloc: {why}"


def reexec_with_tuned_malloc() -> None:
    """Exec this process's command line again with ``SETTINGS`` in its environment,
    where ``plan`` says so; otherwise return. Call it first thing in ``main``: the
    process is replaced (same pid), so nothing done before it survives."""
    added, _ = plan(os.environ, c_library(), installed_accelerator_plugins())
    argv = getattr(sys, "orig_argv", None)
    if not added or not sys.executable or not argv or "-" in argv[1:2]:  # a script read from stdin cannot rerun
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **added})
    except OSError as error:  # e.g. the interpreter was replaced on disk: run untuned rather than not at all
        print(f"jaxalign: note: could not restart with tuned malloc ({error}); continuing with glibc's defaults",
              file=sys.stderr)
