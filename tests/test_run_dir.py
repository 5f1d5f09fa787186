"""One trainer per run directory, and a run directory that is usable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxalign import cli, run_events
from jaxalign.run_dir import LOCK_NAME, RunDirLock, RunDirLockedError, _process_start_ticks
from tests.train_fixtures import run_cli, start_cli, tiny_run_config, wait_for_checkpoint, write_config


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def _write_lock(run_dir, **holder):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"started": "2025-01-01 00:00:00", **holder}))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _train_main(config_path, capsys):
    code = cli.main(["train", str(config_path)])
    return code, capsys.readouterr().err


def test_a_second_trainer_is_refused_at_once_naming_the_holder(tmp_path, sleeper, capsys):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid, proc_start=_process_start_ticks(sleeper.pid))
    code, err = _train_main(write_config(tmp_path / "c.yaml", tiny_run_config(run_dir)), capsys)
    assert code == 1 and "Traceback" not in err
    assert f"is in use by another trainer (PID {sleeper.pid} on host {socket.gethostname()}" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing touched: no config, no checkpoints


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, host="some-other-host", pid=1234)
    with pytest.raises(RunDirLockedError, match=r"PID 1234 on host some-other-host.*cannot be asked.*delete .*trainer\.lock"):
        RunDirLock(run_dir).acquire()


@pytest.mark.parametrize("reason", ["dead pid", "reused pid"])
def test_a_stale_lock_is_taken_over_and_released_after(tmp_path, sleeper, capsys, reason):
    run_dir = tmp_path / "run"
    if reason == "dead pid":
        _write_lock(run_dir, host=socket.gethostname(), pid=_dead_pid())
    else:  # the PID runs, but it is another program than the one that wrote the lock
        _write_lock(run_dir, host=socket.gethostname(), pid=sleeper.pid, proc_start=1)
    lock = RunDirLock(run_dir)
    lock.acquire()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in capsys.readouterr().err
    assert lock.taken_over["previous"]["pid"] != os.getpid()  # the trainer reports it as an event once its sinks open
    assert "taken over" in lock.taken_over["message"]
    lock.release()
    assert not (run_dir / LOCK_NAME).exists()


def test_a_trainer_that_takes_over_a_stale_lock_records_it_in_events(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, host=socket.gethostname(), pid=_dead_pid())
    config = tiny_run_config(run_dir, max_steps=1, eval_batches=1, export=False, log={"tensorboard": False})
    code, err = _train_main(write_config(tmp_path / "c.yaml", config), capsys)
    assert code == 0, err
    taken = [event for event in run_events.problems(run_dir) if event["kind"] == "stale_lock_taken_over"]
    assert len(taken) == 1 and "taken over" in taken[0]["message"], run_events.read(run_dir)
    assert not (run_dir / LOCK_NAME).exists()  # released at the end


def test_a_run_dir_that_is_a_file_or_not_writable_is_a_config_error(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "run"
    a_file.write_text("not a folder")
    code, err = _train_main(write_config(tmp_path / "c.yaml", tiny_run_config(a_file)), capsys)
    assert code == 2 and err.strip() == f"jaxalign: config error: run_dir {a_file} is a file, not a folder; set " \
                                        "run_dir to a folder (it is created if missing)"

    code, err = _train_main(write_config(tmp_path / "c.yaml", tiny_run_config(a_file / "sub")), capsys)
    assert code == 2 and f"cannot create run_dir {a_file / 'sub'}" in err and "Traceback" not in err

    real_open = os.open

    def read_only(path, flags, *args):  # tests may run as root, where chmod does not stop writes
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    code, err = _train_main(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "ro")), capsys)
    assert code == 2 and f"run_dir {tmp_path / 'ro'} is not writable (Permission denied)" in err


@pytest.mark.slow
def test_two_real_trainers_on_one_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=400, eval_batches=1,
                                                                checkpoint={"every_steps": 1}))
    first = start_cli("train", str(config))
    try:
        wait_for_checkpoint(first, run_dir)
        second = run_cli("train", str(config), timeout=120)
        assert second.returncode == 1 and f"PID {first.pid}" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
    third = run_cli("train", str(config), "--set", "max_steps=1", timeout=300)  # the killed one's lock is stale
    assert third.returncode == 0 and "taking over the lock" in third.stderr, third.stderr
