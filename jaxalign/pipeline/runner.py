"""Runs a pipeline: each stage trains (or is skipped when finished, or resumes when
interrupted), each finished policy stage is evaluated as soon as what its evaluation reads
exists, and the results table is rewritten after every evaluation.

What lands in the pipeline's run dir: ``NAME/`` per stage (a normal run dir, with
``eval/EVAL.json`` written by ``jaxalign.eval``), ``timings.json`` (wall and CPU seconds per stage and evaluation) and
``results.md`` / ``results.json`` (the table), each written whole or not at all.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from jaxalign import run_events
from jaxalign.pipeline.config import Pipeline, PipelineError, Stage, load_pipeline
from jaxalign.pipeline.evaluate import is_current
from jaxalign.pipeline.table import results_table, write_atomic

Log = Callable[[str], None]


class PipelineStopped(RuntimeError):
    """A stage's training stopped before its last step (a signal); rerunning resumes it."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_config(stage: Stage):
    from jaxalign.config import load_config

    return load_config(stage.config, list(stage.overrides))


def is_finished(stage: Stage) -> bool:
    """The stage's run ended with its ``finish`` event (evaluations may follow) and an exported folder."""
    lifecycle = [event for event in run_events.read(stage.run_dir) if event.get("kind") in run_events.RUN_STATE]
    return bool(lifecycle) and lifecycle[-1]["kind"] == "finish" and (stage.export / "config.json").is_file()


def _check_same_config(stage: Stage, cfg) -> None:
    """A finished stage is reused only when it ran with the config the pipeline asks for now."""
    from jaxalign.config import config_to_dict
    from jaxalign.resume import changed_keys

    saved_path = stage.run_dir / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
    changed = changed_keys(saved or {}, config_to_dict(cfg))
    if changed:
        raise PipelineError(
            f"stage {stage.name}: {stage.run_dir} finished with a different config ({', '.join(changed[:4])}"
            f"{' ...' if len(changed) > 4 else ''}); remove that folder to retrain the stage, or restore the config")


class PipelineRun:
    """One ``run()`` of a loaded ``Pipeline``; ``log`` receives one line per thing done."""

    def __init__(self, pipeline: Pipeline, log: Log = print):
        self.pipeline, self.log = pipeline, log
        self.timings_path = pipeline.run_dir / "timings.json"
        self.timings: dict[str, Any] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    def run(self) -> Path:
        """Trains and evaluates every stage; returns the results table's path."""
        from jaxalign.trainer import train

        self.pipeline.run_dir.mkdir(parents=True, exist_ok=True)
        configs = {stage.name: stage_config(stage) for stage in self.pipeline.stages}  # all config errors first
        for stage in self.pipeline.stages:
            cfg = configs[stage.name]
            if is_finished(stage):
                _check_same_config(stage, cfg)
                self.log(f"stage {stage.name}: finished earlier, skipped ({stage.export})")
            else:
                missing = [name for name in stage.needs if not is_finished(self.pipeline.stage(name))]
                if missing:  # cannot happen in order; guards a hand-edited run dir
                    raise PipelineError(f"stage {stage.name}: needs stage(s) {', '.join(missing)} to be finished first")
                resumed = (stage.run_dir / "checkpoints").is_dir()
                self.log(f"stage {stage.name}: {'resuming' if resumed else 'training'} in {stage.run_dir}")
                wall, cpu = time.monotonic(), _cpu_seconds()
                train(cfg)
                self._record(stage.name, "train", wall, cpu, resumed=resumed)
                if not is_finished(stage):
                    raise PipelineStopped(f"stage {stage.name} stopped before its last step; rerun the same command "
                                          "to resume it from its last checkpoint")
            self._evaluate_ready()
        return self._write_table()

    def _record(self, name: str, what: str, wall: float, cpu: float, **extra: Any) -> None:
        entry = self.timings.setdefault(name, {})
        if extra.get("resumed"):  # an interrupted stage's earlier seconds count too
            wall -= entry.get(f"{what}_wall_s", 0.0)
            cpu -= entry.get(f"{what}_cpu_s", 0.0)
        entry[f"{what}_wall_s"] = round(time.monotonic() - wall, 1)
        entry[f"{what}_cpu_s"] = round(_cpu_seconds() - cpu, 1)
        write_atomic(self.timings_path, json.dumps(self.timings, indent=1))

    def _evaluate_ready(self) -> None:
        """Evaluates every finished stage whose evaluations are missing, once what they read exists."""
        from jaxalign.eval import evaluate

        if not self.pipeline.evals:
            return
        if not all(is_finished(self.pipeline.stage(name)) for name in self.pipeline.eval_needs):
            return
        for stage in self.pipeline.stages:
            if not stage.evaluate or not is_finished(stage):
                continue
            for spec in self.pipeline.evals:
                if is_current(stage.run_dir, spec):
                    continue
                self.log(f"stage {stage.name}: evaluating ({spec['name']})")
                wall, cpu = time.monotonic(), _cpu_seconds()
                evaluate(stage.run_dir, spec)  # writes RUN_DIR/eval/NAME.json (with its spec)
                self._record(stage.name, f"eval_{spec['name']}", wall, cpu)
                self._write_table()

    def _write_table(self) -> Path:
        results = {}
        for stage in self.pipeline.stages:
            if not stage.evaluate:
                continue
            results[stage.name] = {}
            for spec in self.pipeline.evals:
                path = stage.run_dir / "eval" / f"{spec['name']}.json"
                if path.is_file():
                    results[stage.name][spec["name"]] = json.loads(path.read_text())["metrics"]
        table = results_table(self.pipeline, results, self.timings)
        out = self.pipeline.run_dir / "results.md"
        write_atomic(out, table)
        write_atomic(self.pipeline.run_dir / "results.json",
                     json.dumps({"results": results, "timings": self.timings}, indent=1))
        return out


def run_pipeline(path: str | Path, *, sweeps: bool = False, log: Log = print) -> Path:
    """Loads the pipeline YAML at ``path`` and runs it (see ``PipelineRun.run``); returns the
    results table's path (``RUN_DIR/results.md``)."""
    return PipelineRun(load_pipeline(path, sweeps=sweeps), log).run()
