"""jaxalign.host_malloc: the jaxalign command restarts with glibc malloc settings under which
XLA:CPU reuses its buffers instead of page-faulting them in again on every execution."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from jaxalign import host_malloc
from tests.train_fixtures import run_cli, tiny_run_config, write_config

TUNED = {**host_malloc.SETTINGS, host_malloc.SWITCH: "tuned"}


@pytest.mark.parametrize("environ, libc, plugins, why", [
    ({"JAX_PLATFORMS": "cpu"}, "glibc", [], "tuned for XLA:CPU"),
    ({}, "glibc", [], "tuned for XLA:CPU"),
    ({"JAX_PLATFORMS": "cpu"}, "glibc", ["jax_cuda12_plugin"], "tuned for XLA:CPU"),  # the user chose CPU
    ({}, "glibc", ["jax_cuda12_plugin"], "glibc's defaults (an accelerator backend: jax_cuda12_plugin installed)"),
    ({"JAX_PLATFORMS": "tpu,cpu"}, "glibc", [], "glibc's defaults (an accelerator backend: JAX_PLATFORMS=tpu,cpu)"),
    ({}, "", [], "the C library's defaults (not glibc)"),
    ({"JAXALIGN_HOST_MALLOC": "off"}, "glibc", [], "glibc's defaults (JAXALIGN_HOST_MALLOC=off)"),
    ({"MALLOC_ARENA_MAX": "4"}, "glibc", [], "as set in the environment (MALLOC_ARENA_MAX)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "glibc", [], "as set in the environment (GLIBC_TUNABLES)"),
    (TUNED, "glibc", [], "tuned for XLA:CPU (MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_="),
])
def test_plan_tunes_only_a_cpu_process_on_glibc_the_user_left_alone(environ, libc, plugins, why):
    added, reason = host_malloc.plan(environ, libc, plugins)
    assert reason.startswith(why)
    assert added == (TUNED if why == "tuned for XLA:CPU" else {})


def test_a_process_not_started_by_the_command_says_so(monkeypatch):
    for key in TUNED:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert "did not start through the jaxalign command" in host_malloc.describe()
    monkeypatch.setenv("JAXALIGN_HOST_MALLOC", "off")
    assert host_malloc.describe() == "host malloc: glibc's defaults (JAXALIGN_HOST_MALLOC=off)"


# Runs a jitted function with a 256 MiB temp buffer argv[1] times, printing each run's minor page faults.
FAULTS_PER_RUN = textwrap.dedent("""
    import resource, sys
    from jaxalign.host_malloc import reexec_with_tuned_malloc
    reexec_with_tuned_malloc()
    import jax, jax.numpy as jnp
    x = jnp.ones((32 * 1024 * 1024,), jnp.float32)
    step = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 2.0)[::4096])
    faults = []
    for _ in range(int(sys.argv[1])):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(faults)
""")


def _faults_per_run(switch: str | None, runs: int) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in TUNED}
    env["JAX_PLATFORMS"] = "cpu"
    if switch:
        env[host_malloc.SWITCH] = switch
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_RUN, str(runs)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_malloc.c_library() != "glibc", reason="the settings are glibc's")
def test_restarted_process_reuses_xla_buffers_instead_of_faulting_them_in():
    temp_pages = 256 * 1024 * 1024 // 4096
    untuned = _faults_per_run("off", runs=6)
    # glibc's defaults: every run maps its temp buffer afresh and touches every page of it.
    assert min(untuned[1:]) > 0.9 * temp_pages, untuned
    tuned = _faults_per_run(None, runs=40)
    # Tuned: once the heap has grown to hold the buffers of the runs in flight (XLA frees a run's
    # buffers asynchronously, so the next may start first; 10-30 runs here), later runs reuse them.
    assert sorted(tuned[-10:])[5] < 0.05 * temp_pages, tuned


def test_the_jaxalign_command_trains_in_a_tuned_process(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", max_steps=1))
    result = run_cli("train", str(config), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "host malloc: tuned for XLA:CPU (MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0" in result.stderr, result.stderr
