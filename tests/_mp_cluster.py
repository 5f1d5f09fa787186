"""Start several ``jaxalign train`` processes on this machine, as a pod would.

Each process gets ``devices_per_process`` fake CPU devices and joins the
coordinator on 127.0.0.1 (gloo collectives); the command line is the one a
launch script runs on every host, plus ``--process-id``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A launch's deadline. A 4-step DPO run over two processes took 6-7 min at load 17-18 on 2 cores
# (2026-12-03), past the 420 s this was, and failed a test that passes at load 2-4 in ~1 min;
# 900 s matches tests/conftest.py's patience for XLA's CPU collectives.
LAUNCH_TIMEOUT_S = 900


@dataclasses.dataclass
class Finished:
    process_id: int
    returncode: int
    output: str  # stdout and stderr together


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO))
    env.pop("JAXALIGN_DEBUG", None)
    return env


def train_processes(config: Path, *overrides: str, processes: int = 2, devices_per_process: int = 2,
                    timeout: float = LAUNCH_TIMEOUT_S, log_dir: Path | None = None) -> list[Finished]:
    """Runs ``jaxalign train config`` as ``processes`` cooperating processes; waits for all.

    Output goes to files (a full pipe would stall a process and, through the
    collectives, all of them). On timeout every process is killed.
    """
    log_dir = log_dir or config.parent
    coordinator = f"127.0.0.1:{free_port()}"
    sets = [arg for item in overrides for arg in ("--set", item)]
    running = []
    for index in range(processes):
        log_path = log_dir / f"{config.stem}.process{index}.log"
        handle = log_path.open("w")
        command = [sys.executable, "-m", "jaxalign.cli", "train", str(config), *sets, "--coordinator", coordinator,
                   "--num-processes", str(processes), "--process-id", str(index)]
        proc = subprocess.Popen(command, env=cpu_env(devices_per_process), stdout=handle, stderr=subprocess.STDOUT,
                                cwd=REPO)
        running.append((proc, handle, log_path))
    deadline = time.monotonic() + timeout
    try:
        for proc, _, _ in running:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, handle, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            handle.close()
    return [Finished(i, proc.returncode, path.read_text()) for i, (proc, _, path) in enumerate(running)]


def train_one_process(config: Path, *overrides: str, devices: int = 4,
                      timeout: float = LAUNCH_TIMEOUT_S) -> Finished:
    """The same run as a single process with ``devices`` fake CPU devices."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "jaxalign.cli", "train", str(config), *sets],
                            env=cpu_env(devices), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return Finished(0, result.returncode, result.stdout + result.stderr)


def assert_all_ok(finished: list[Finished]) -> None:
    for run in finished:
        assert run.returncode == 0, f"process {run.process_id} exited {run.returncode}:\n{run.output[-4000:]}"
