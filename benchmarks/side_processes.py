"""jaxalign and TRL trainers, each in its own worker process, taking turns step by step.

The reward-model, DPO and scaling benchmarks run their two sides this way. The calling
process coordinates: TRL's ``train()`` runs in its worker with
``side_by_side.run_trl_interleaved``; after each TRL step that worker tells the
coordinator, which has the jaxalign worker run one ``common.JaxalignStepper`` step and
then lets TRL go on. So the sides still alternate on the machine and see the same
background load, but:

* each side has its own allocator heap. In one shared process the peer's tensors and
  XLA's step buffers come and go in the same glibc heap, and a step's buffers keep
  landing on pages the other side just released: on a machine where a page fault is
  expensive (a VM measured at ~13 us a fault) that made jaxalign's reward-model step 20-50%
  slower than alone;
* each side starts with its own environment (``trl_malloc``: TRL under jaxalign's
  malloc settings, or glibc's defaults as a plain ``python`` process gets them);
* each side's RSS high-water mark (``ru_maxrss``) is its own.

The workers talk to the coordinator in JSON lines prefixed with ``@@`` on stdout/stdin
(other output goes to the worker's log file).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import side_by_side  # noqa: E402

PREFIX = "@@ "
TRL_MALLOC = ("same", "glibc")  # TRL's worker: the coordinator's malloc settings, or glibc's defaults


def add_trl_malloc_option(parser) -> None:
    """``--trl-malloc``, as every side-by-side benchmark (and ``run_all.py``) takes it."""
    parser.add_argument("--trl-malloc", choices=TRL_MALLOC, default="same",
                        help="TRL's process: jaxalign's malloc settings (same) or glibc's defaults (glibc)")


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def side_environment(side: str, trl_malloc: str) -> dict[str, str]:
    """A worker's environment. jaxalign's is the coordinator's (which started like the
    ``jaxalign`` command); TRL's too, or with jaxalign's malloc settings taken out."""
    from jaxalign import host_malloc

    if trl_malloc not in TRL_MALLOC:
        raise ValueError(f"trl_malloc must be one of {TRL_MALLOC}, got {trl_malloc!r}")
    environ = dict(os.environ)
    if side == "trl" and trl_malloc == "glibc":
        for key in host_malloc.SETTINGS:
            environ.pop(key, None)
        environ[host_malloc.SWITCH] = "off"
    return environ


# ------------------------------------------------------------------- side workers


def _send(message: dict) -> None:
    sys.__stdout__.write(PREFIX + json.dumps(message, default=float) + "\n")
    sys.__stdout__.flush()


def _receive() -> str:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("coordinator went away")
    return line.strip()


def _tokenizer(spec: str):
    if spec == "builtin":
        from jaxalign.data import load_tokenizer

        return load_tokenizer("builtin")
    return common.gpt2_tokenizer(Path(spec))


def side_worker(side: str, spec: dict) -> None:
    """Builds one side's trainer, reports its setup, then steps when told.

    ``spec``: ``workload`` (``rm`` or ``dpo``), ``tmp`` (run folders go there), ``ckpt``,
    ``pairs``, ``max_length``, ``lr``, ``warmup``, ``steps``, ``pack_length`` (or None);
    jaxalign's ``data`` and ``tokenizer`` (as its config takes them); TRL's ``trl_rows``
    (a JSON-lines file of the rows as TRL gets them) and ``trl_tokenizer`` (a tokenizer
    folder, or ``builtin``)."""
    sys.stdout = sys.stderr  # library prints must not reach the protocol stream
    common.quiet_libraries()
    from jaxalign.host_malloc import describe

    tmp = Path(spec["tmp"])
    total = spec["warmup"] + spec["steps"]
    shape = (spec["pairs"], spec["max_length"], spec["lr"], total)
    start = time.perf_counter()
    if side == "jaxalign":
        build = side_by_side.jaxalign_dpo_trainer if spec["workload"] == "dpo" else side_by_side.jaxalign_rm_trainer
        trainer = build(tmp / "jaxalign-run", Path(spec["ckpt"]), spec["tokenizer"], spec["data"], *shape,
                        spec.get("pack_length"))
        stepper = common.JaxalignStepper(trainer)
    else:
        build = side_by_side.trl_dpo_trainer if spec["workload"] == "dpo" else side_by_side.trl_rm_trainer
        rows = [json.loads(line) for line in open(spec["trl_rows"], encoding="utf-8")]
        trainer = build(tmp / "trl-run", Path(spec["ckpt"]), rows, _tokenizer(spec["trl_tokenizer"]), *shape)
    _send({"event": "ready", "setup_seconds": time.perf_counter() - start, "rss_mb": rss_mb(),
           "host_malloc": describe().removeprefix("host malloc: "),
           "train_rows": len(trainer.train_dataset) if side == "trl" else None})
    if side == "jaxalign":
        while _receive() == "step":
            _send({"event": "record", **stepper.step()})
        epoch = side_by_side.epoch_shapes(trainer.train_data) if spec.get("epoch_shapes") else None
        _send({"event": "done", "compiles": stepper.compiles(), "peak_rss_mb": peak_rss_mb(), "epoch": epoch})
        return

    def between_steps() -> None:
        _send({"event": "trl_step"})
        if _receive() != "go":
            raise SystemExit("coordinator stopped the run")

    _receive()  # "start"
    result = side_by_side.run_trl_interleaved(trainer, between_steps, total)
    _send({"event": "done", **result, "peak_rss_mb": peak_rss_mb()})


# -------------------------------------------------------------------- coordinator


class _Worker:
    """A side worker process and its ``@@`` message stream."""

    def __init__(self, side: str, spec_file: Path, log: Path, environ: dict[str, str]):
        self.side, self.log = side, open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--side", side, str(spec_file)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=environ)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
            self.log.write(line)
        self.log.flush()
        raise RuntimeError(f"{self.side} worker exited ({self.process.wait()}); its log: {self.log.name}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def run_in_side_processes(spec: dict, trl_malloc: str = "same") -> dict:
    """Runs ``warmup + steps`` optimizer steps of each side (``side_worker``'s ``spec``;
    ``spec["tmp"]`` must exist), alternating, one worker process per side. A jaxalign
    step that meets a new batch shape compiles inside it; its ``run_seconds`` are its
    wall time minus the seconds jax reports for tracing, lowering and compiling.

    Returns ``jaxalign`` (``JaxalignStepper`` records), ``trl_seconds``, ``trl_faults``, ``trl_census``,
    ``compiles``, ``trl_train_rows`` (rows TRL kept after its own filtering), and per
    side (``{"jaxalign": ..., "trl": ...}``): ``setup_seconds``, ``ready_rss_mb``,
    ``peak_rss_mb``, ``host_malloc``; ``epoch`` (jaxalign's epoch shape census,
    ``side_by_side.epoch_shapes``) where ``spec["epoch_shapes"]``."""
    tmp = Path(spec["tmp"])
    spec_file = tmp / "side-spec.json"
    spec_file.write_text(json.dumps(spec))
    environments = {side: side_environment(side, trl_malloc) for side in ("jaxalign", "trl")}  # bad input first
    workers = {side: _Worker(side, spec_file, tmp / f"{side}.log", environ) for side, environ in environments.items()}
    try:
        ready = {side: worker.receive() for side, worker in workers.items()}
        jax_worker, trl_worker = workers["jaxalign"], workers["trl"]
        trl_worker.send("start")
        records = []
        while (message := trl_worker.receive())["event"] == "trl_step":
            jax_worker.send("step")
            records.append(jax_worker.receive())
            trl_worker.send("go")
        trl_done = message
        jax_worker.send("finish")
        jax_done = jax_worker.receive()
    except BaseException:  # an interrupt too: the workers must not outlive the run
        for worker in workers.values():
            worker.close()
            sys.stderr.write(f"--- {worker.side} worker log (tail)\n{Path(worker.log.name).read_text()[-3000:]}\n")
        raise
    for worker in workers.values():
        worker.close()
    done = {"jaxalign": jax_done, "trl": trl_done}
    return {
        "jaxalign": records, "trl_seconds": trl_done["trl_seconds"], "trl_faults": trl_done["trl_faults"],
        "trl_census": trl_done["trl_census"],
        "compiles": jax_done["compiles"], "epoch": jax_done.get("epoch"), "trl_train_rows": ready["trl"]["train_rows"],
        **{key: {side: ready[side][key] for side in ready} for key in ("setup_seconds", "host_malloc")},
        "ready_rss_mb": {side: ready[side]["rss_mb"] for side in ready},
        "peak_rss_mb": {side: done[side]["peak_rss_mb"] for side in done},
    }


if __name__ == "__main__":
    common.start_like_the_jaxalign_command()
    if len(sys.argv) != 4 or sys.argv[1] != "--side" or sys.argv[2] not in ("jaxalign", "trl"):
        raise SystemExit("usage (internal, started by run_in_side_processes): "
                         "side_processes.py --side jaxalign|trl SPEC")
    side_worker(sys.argv[2], json.loads(Path(sys.argv[3]).read_text()))
