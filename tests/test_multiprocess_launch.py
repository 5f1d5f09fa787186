"""The launch scripts: shellcheck, usage, the commands they would run on a pod,
a cluster or GKE (dry runs), and a real local multi-process run stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests._mp_cluster import REPO, cpu_env
from tests.train_fixtures import tiny_run_config, write_config

LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), LAUNCH / "slurm.sbatch"])


def _bash(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, **(env or {})})


def test_all_launchers_are_here():
    names = {path.name for path in LAUNCH.iterdir()}
    assert {"env.sh", "tpu_pod.sh", "gke_jobset.yaml", "gke_xpk.sh", "slurm.sbatch", "local_multiprocess.sh"} <= names


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck, brew install shellcheck)")
def test_shell_scripts_pass_shellcheck():  # the launch scripts and CI's own script
    result = subprocess.run(["shellcheck", "--external-sources", *map(str, SCRIPTS), str(REPO / ".ci" / "run")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_are_strict_parse_and_explain_themselves(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert _bash("-n", str(script)).returncode == 0
    helped = _bash(str(script), "--help")
    assert helped.returncode == 0 and "Usage:" in helped.stdout
    if script.name != "env.sh":  # env.sh without arguments installs for the guessed platform
        bare = _bash(str(script), env={"JAXALIGN_DRY_RUN": "1"})
        assert bare.returncode == 2 and "Usage:" in bare.stdout + bare.stderr


def test_tpu_pod_runs_the_same_command_on_every_worker():
    result = _bash("launch/tpu_pod.sh", "--dry-run", "--tpu", "dpo-v5p", "--zone", "us-east5-a", "--create", "v5p-64",
                   "--spot", "--", "train", "configs/examples/llama3_8b_dpo_v5p64.yaml", "--set", "model.path=/m/a b")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create dpo-v5p --zone us-east5-a --accelerator-type v5p-64 "
                               "--version v2-alpha-tpuv5 --spot")
    assert any(line.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in line for line in lines)
    train = lines[-1]
    assert train.startswith("gcloud compute tpus tpu-vm ssh dpo-v5p --zone us-east5-a --worker=all --command ")
    # The remote command, unquoted once by the local shell as gcloud would receive it:
    remote = subprocess.run(["bash", "-c", f"printf '%s' {train.split('--command ', 1)[1]}"],
                            capture_output=True, text=True).stdout
    assert "source launch/env.sh tpu && jaxalign train configs/examples/llama3_8b_dpo_v5p64.yaml" in remote
    assert "model.path=/m/a\\ b" in remote  # quoted for the remote shell: still one argument there


def test_slurm_one_process_per_node_drives_all_of_its_gpus():
    per_gpu = _bash("launch/slurm.sbatch", "train", "c.yaml", env={"JAXALIGN_DRY_RUN": "1"})
    assert per_gpu.returncode == 0, per_gpu.stderr
    assert "srun --kill-on-bad-exit=1 --cpu-bind=none python -m jaxalign.cli train c.yaml" in per_gpu.stdout
    assert "JAX_LOCAL_DEVICE_IDS=<SLURM_LOCALID>" in per_gpu.stdout
    per_node = _bash("launch/slurm.sbatch", "train", "c.yaml",
                     env={"JAXALIGN_DRY_RUN": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "h100:8"})
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in per_node.stdout
    mismatch = _bash("launch/slurm.sbatch", "train", "c.yaml",
                     env={"JAXALIGN_DRY_RUN": "1", "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_ON_NODE": "8"})
    assert mismatch.returncode == 2 and "one task per GPU or per node" in mismatch.stderr


def test_slurm_tasks_are_detected_as_one_multi_process_run(monkeypatch):
    from jaxalign import distributed

    for name, value in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="gpu[01-04]", SLURM_NTASKS="32",
                            SLURM_PROCID="9", SLURM_LOCALID="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert distributed.cluster_hint() == "SLURM"


def test_xpk_submission_and_jobset_run_jaxalign_on_every_host():
    result = _bash("launch/gke_xpk.sh", "--dry-run", "--cluster", "tpus", "--image", "img:1", "--tpu-type", "v5p-64",
                   "--workload", "dpo", "--", "train", "configs/examples/llama3_8b_dpo_v5p64.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("xpk workload create --cluster tpus --workload dpo --tpu-type v5p-64 --num-slices 1 "
                                    "--docker-image img:1 --max-restarts 3 --command ")
    (jobset,) = yaml.safe_load_all((LAUNCH / "gke_jobset.yaml").read_text())
    assert jobset["kind"] == "JobSet" and jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 8  # v5p-64: 8 hosts
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4x4"  # 32 chips
    command = " ".join(container["args"])
    assert "jaxalign train configs/examples/llama3_8b_dpo_v5p64.yaml" in command
    assert (REPO / "configs/examples/llama3_8b_dpo_v5p64.yaml").exists()


@pytest.mark.slow
def test_local_multiprocess_script_trains_and_stops_every_process_on_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=500, eval_batches=1,
                                                               checkpoint={"every_steps": 100, "every_minutes": 0}))
    env = {**cpu_env(1), "PYTHON": sys.executable}
    env.pop("XLA_FLAGS")  # the script sets each process's device count
    script = subprocess.Popen(["bash", str(LAUNCH / "local_multiprocess.sh"), "-n", "2", "-d", "2", "-l",
                               str(tmp_path / "logs"), "--", "train", str(config)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and "train/loss" in metrics.read_text():
                break
            assert script.poll() is None, script.stdout.read()
            time.sleep(0.2)
        script.send_signal(signal.SIGTERM)
        output, _ = script.communicate(timeout=120)
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 0, output[-3000:]
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 500 and saved[-1] % 100 != 0  # saved on the signal, not on schedule
    data = run_dir / "checkpoints" / str(saved[-1]) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]
    for index in range(2):
        log = (tmp_path / "logs" / f"process_{index}.log").read_text()
        assert "Traceback" not in log
