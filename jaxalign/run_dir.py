"""The run directory: usable (a writable folder) and used by one trainer at a time.

Two trainers writing one run directory corrupt each other: interleaved
``metrics.jsonl`` lines, one deleting the other's in-flight checkpoint as a
left-over temporary folder, both resuming from and saving the same steps.
``RunDirLock`` stops the second one at once. Process 0 creates
``<run_dir>/trainer.lock`` with ``O_EXCL`` (atomic on local filesystems and
NFS v3+) and writes who holds it::

    {"host": "node-3", "pid": 41822, "proc_start": 1234567, "started": "2025-01-06 12:04:31", "argv": [...]}

A second trainer finds the file, reads the holder and refuses, naming it. A
lock left by a trainer that died without cleaning up (SIGKILL, OOM, a power
cut) is stale: on the same host the holder's PID is no longer running (or is
now another program: its start time differs), so the lock is taken over and
this is logged. A lock written on another host cannot be checked from here
(there is no portable way to ask another machine about a PID): the message
says so and names the file to delete once that host's trainer is known to be
gone. Other processes of a multi-process run agree with process 0's outcome.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jaxalign import distributed
from jaxalign.configlib import ConfigError
from jaxalign.metrics_log import get_logger

log = get_logger("run_dir")

LOCK_NAME = "trainer.lock"
_UNREADABLE_GRACE_S = 2.0  # a lock just created by another trainer may not hold its JSON yet


class RunDirError(ConfigError):
    """The run directory cannot be used: it is a file, or cannot be created or written."""


class RunDirLockedError(RuntimeError):
    """Another live trainer holds the run directory."""


def prepare(run_dir: str | os.PathLike) -> Path:
    """Creates ``run_dir`` if needed; a clear ``RunDirError`` when it is a file or cannot be created."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run_dir {path} is a file, not a folder; set run_dir to a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create run_dir {path}: {err.strerror or err}; set run_dir to a folder you can "
                          "write") from err
    return path


def _process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a reused PID apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its closing parenthesis.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _holder_alive(holder: dict[str, Any]) -> bool | None:
    """True/False for a holder on this host; None when it is on another host (cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    recorded, current = holder.get("proc_start"), _process_start_ticks(pid)
    return recorded is None or current is None or recorded == current


class RunDirLock:
    """``acquire()`` / ``release()`` of ``<run_dir>/trainer.lock``; safe to call twice."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False  # acquired, on every process
        self._content: dict[str, Any] | None = None  # what process 0 wrote
        # {"message", "previous"} when a stale lock was taken over; the trainer reports it as an event.
        self.taken_over: dict[str, Any] | None = None

    def acquire(self) -> None:
        """Takes the lock (process 0) or raises ``RunDirLockedError`` naming the holder;
        every process of a multi-process run gets the same outcome."""
        if self.held:
            return
        error: Exception | None = None
        if distributed.is_main_process():
            try:
                self._acquire_here()
            except (RunDirLockedError, RunDirError) as err:
                error = err
        if not distributed.main_process_decides("run_dir_lock", error is None):
            raise error or RunDirLockedError(
                f"process 0 could not lock run_dir {self.run_dir} (its log says why); stopping here too")
        self.held = True
        if self._content is not None:
            atexit.register(self.release)

    def release(self) -> None:
        """Removes the lock file if it is still ours."""
        if not self.held:
            return
        self.held = False
        if self._content is None:
            return
        atexit.unregister(self.release)
        if self._read() == self._content:
            self.path.unlink(missing_ok=True)
        self._content = None

    # ------------------------------------------------------------ process 0

    def _acquire_here(self) -> None:
        prepare(self.run_dir)
        for _ in range(3):  # a stale lock is moved aside, then created afresh
            if self._create():
                return
            holder = self._wait_readable()
            if holder is not None and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
                self._take_over(holder, "this process")  # e.g. a second Trainer in one Python session
                continue
            alive = _holder_alive(holder) if holder is not None else False
            if alive is False:
                self._take_over(holder, "a trainer that is no longer running")
                continue
            raise RunDirLockedError(self._locked_message(holder, same_host=alive is True))
        raise RunDirLockedError(f"could not lock run_dir {self.run_dir}: {self.path} keeps reappearing; "
                                "is another trainer starting on it right now?")

    def _create(self) -> bool:
        content = {
            "host": socket.gethostname(), "pid": os.getpid(), "proc_start": _process_start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv,
        }
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except PermissionError as err:
            raise RunDirError(f"run_dir {self.run_dir} is not writable ({err.strerror}); set run_dir to a folder "
                              "you can write") from err
        with os.fdopen(descriptor, "w") as handle:
            json.dump(content, handle)
        self._content = json.loads(json.dumps(content))  # as it reads back
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _wait_readable(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + _UNREADABLE_GRACE_S
        while True:
            holder = self._read()
            if holder is not None or time.monotonic() > deadline or not self.path.exists():
                return holder
            time.sleep(0.05)

    def _take_over(self, holder: dict[str, Any] | None, whose: str) -> None:
        if whose != "this process":
            described = _describe(holder) if holder else "an unreadable lock"
            log.warning("taking over the lock on %s left by %s (%s)", self.run_dir, whose, described)
            self.taken_over = {"message": f"lock left by {described} taken over", "previous": holder}
        try:
            os.replace(self.path, self.path.with_name(f"{LOCK_NAME}.stale"))
        except FileNotFoundError:
            pass  # someone else moved it first; try to create it again

    def _locked_message(self, holder: dict[str, Any] | None, same_host: bool) -> str:
        who = _describe(holder) if holder else "an unknown trainer"
        advice = ("wait for it to finish or stop it, or give this run another run_dir" if same_host else
                  "that host cannot be asked from here whether it still runs: once you know it does not, "
                  f"delete {self.path}; otherwise give this run another run_dir")
        return f"run_dir {self.run_dir} is in use by another trainer ({who}; lock file {self.path}): {advice}"


def _describe(holder: dict[str, Any]) -> str:
    return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
