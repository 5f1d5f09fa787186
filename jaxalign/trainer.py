"""The one training loop: batches -> step -> sinks -> eval -> checkpoint.

It drives every algorithm the same way through the ``AlgoRun`` contract
(``train_state.py``) and knows nothing algorithm-specific. Side effects live
here: data iteration, checkpoints, signals, export, and what goes to the
sinks (``jaxalign.sinks``): scalars, and the events ``start``, ``resume``,
``checkpoint``, ``eval``, ``finish``, ``stop`` and ``error``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import yaml

from jaxalign import distributed, health, host_malloc
from jaxalign.checkpoint import Checkpointer
from jaxalign.compilation import CompileCounter, enable_compilation_cache
from jaxalign.config import TrainConfig, config_to_dict
from jaxalign.data import build_pipeline, load_tokenizer
from jaxalign.data.report import DataReport
from jaxalign.metrics_log import get_logger
from jaxalign.optim import learning_rate_schedule, on_host
from jaxalign.export_run import finish_folders
from jaxalign.resume import resume_latest
from jaxalign.run_dir import RunDirLock
from jaxalign.sharding import batch_divisor, batch_sharding, make_mesh, replicated, shard_batch
from jaxalign.signals import GracefulStop
from jaxalign.sinks import Sinks, open_sinks
from jaxalign.train_state import AlgoRun

log = get_logger()


NonFiniteLossError = health.NonFiniteStateError  # the loss or the updated weights became NaN or inf


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


@jax.jit
def _window_add(window: dict | None, metrics: dict, segment_ids: jax.Array) -> dict:
    """One step into the metrics window, as one device program: metric sums, the
    finite flags (loss, and updated state when checked) and the token count."""
    step = {"finite": health.step_is_finite(metrics), "loss_finite": jnp.isfinite(metrics["loss"]),
            "tokens": jnp.count_nonzero(segment_ids),
            "sums": {name: value for name, value in metrics.items() if name != health.FINITE_STATE_KEY}}
    if window is None:
        return step
    return {"finite": window["finite"] & step["finite"], "loss_finite": window["loss_finite"] & step["loss_finite"],
            "tokens": window["tokens"] + step["tokens"],
            "sums": jax.tree.map(jnp.add, window["sums"], step["sums"])}


def _reduce_eval(name: str, values: list[float], weights: list[float]) -> float:
    """Eval metrics are averaged weighted by examples, except extremes."""
    leaf = name.rsplit("/", 1)[-1]
    if leaf.startswith("min"):
        return float(min(values))
    if leaf.startswith("max"):
        return float(max(values))
    total = sum(weights)
    return float(sum(v * w for v, w in zip(values, weights)) / total) if total else float("nan")


class Trainer:
    """Owns one run: build with a config, call ``run()``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.run_lock = RunDirLock(self.run_dir)  # first: nothing may touch another trainer's run dir
        self.run_lock.acquire()
        # Before anything compiles: every executable of the run goes through the cache.
        enable_compilation_cache(cfg.compilation)
        self.compiles = CompileCounter()
        self.mesh = make_mesh(cfg.mesh)
        self.is_main = distributed.is_main_process()
        algorithm = cfg.algorithm
        tokenizer_path = cfg.model.tokenizer or cfg.model.path
        if tokenizer_path is None:
            raise ValueError("model.tokenizer is required when the model is built from model.config")
        self.tokenizer = load_tokenizer(tokenizer_path)
        local_rows_multiple = max(batch_divisor(self.mesh) // jax.process_count(), 1)
        pipeline_args = dict(
            kind=algorithm.data_kind(cfg),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            row_multiple=local_rows_multiple,
        )
        if jax.process_count() > 1:
            # Packing picks shapes from local data; global arrays need one shape everywhere.
            pipeline_args["shape_agreement"] = distributed.agree_on_shape
        max_batches = cfg.max_steps * cfg.optim.grad_accum_steps if cfg.max_steps else None
        self.train_data = build_pipeline(cfg.data, self.tokenizer, split="train", max_batches=max_batches,
                                         **pipeline_args)
        self.eval_data = build_pipeline(cfg.data, self.tokenizer, split="eval", **pipeline_args)
        self.data_report = DataReport()  # skipped rows, truncated and dropped examples, as metrics
        self.total_steps = self._total_steps()
        # Opened by run(); the algorithm gets it now so that its rollout hook can publish tables.
        self.sinks = Sinks()
        self.algo: AlgoRun = algorithm.setup(cfg, self.mesh, self.tokenizer, self.total_steps, sink=self.sinks)
        self.learning_rate = on_host(learning_rate_schedule(cfg.optim, self.total_steps * self.algo.updates_per_step))
        self.state = self.algo.state
        state_shardings = _shardings(self.state)
        frozen_shardings = _shardings(self.algo.frozen)
        rows = batch_sharding(self.mesh)
        self.train_step = jax.jit(
            health.with_state_check(self.algo.train_step),
            in_shardings=(state_shardings, rows, frozen_shardings),
            out_shardings=(state_shardings, replicated(self.mesh)),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            self.algo.eval_step,
            in_shardings=(state_shardings, rows, frozen_shardings),
            out_shardings=replicated(self.mesh),
        )
        self.checkpointer = Checkpointer(cfg.checkpoint, self.run_dir)
        self.generation_eval = None
        if cfg.eval is not None:
            from jaxalign.eval.during_training import TrainingEvaluator

            self.generation_eval = TrainingEvaluator(cfg, self.run_dir, self.tokenizer, self.algo.export, self.sinks,
                                                     self.is_main)

    def _total_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        micro_steps = self.train_data.steps_per_epoch * self.cfg.data.num_epochs
        return max(micro_steps // self.cfg.optim.grad_accum_steps, 1)

    def _save_config(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "config.yaml", "w") as handle:
                yaml.safe_dump(config_to_dict(self.cfg), handle, sort_keys=False)

    def evaluate(self) -> dict[str, float]:
        """Runs the eval split (or its first ``eval_batches`` batches)."""
        if self.eval_data is None:
            return {}
        collected: dict[str, list[float]] = {}
        weights: list[float] = []
        data_before = self.eval_data.stats
        for index, host_batch in enumerate(self.eval_data.iterator()):
            if self.cfg.eval_batches and index >= self.cfg.eval_batches:
                break
            batch = shard_batch(host_batch, self.mesh)
            if self.algo.rollout is not None:
                batch, _ = self.algo.rollout(self.state, batch, self.algo.frozen, "eval", index)
            metrics = jax.device_get(self.eval_step(self.state, batch, self.algo.frozen))
            weights.append(float(metrics.pop("eval_weight")))
            for name, value in metrics.items():
                collected.setdefault(name, []).append(float(value))
        reduced = {name: _reduce_eval(name, values, weights) for name, values in collected.items()}
        reduced = self.algo.summarize_eval(reduced) if self.algo.summarize_eval else reduced
        return {**reduced, **self.data_report.metrics(self.eval_data, since=data_before)}

    def _check_finite(self, window: "_MetricsWindow", step: int) -> None:
        """Raises before anything non-finite (loss or updated state) can be saved."""
        if window.finite is not None and not bool(jax.device_get(window.finite)):
            loss_finite = bool(jax.device_get(window.loss_finite))
            message = health.non_finite_message(step, loss_finite, self.checkpointer.latest_step(),
                                                self.checkpointer.directory)
            self.sinks.write_event(step, "non_finite", message=message)
            raise NonFiniteLossError(message)

    def _record_problem(self, kind: str, message: str, step: int | None = None, **fields: Any) -> None:
        """What the run did about trouble (damage, fallback, divergence, a stale lock) as an event."""
        self.sinks.write_event(self._step if step is None else step, kind, message=message, **fields)

    def run(self) -> dict[str, Any]:
        """Trains to ``total_steps`` (resuming from the latest checkpoint) and
        returns the last train and eval metrics. SIGTERM/SIGINT finish the
        current step, save a checkpoint and return."""
        self.run_lock.acquire()  # no-op unless an earlier run() released it
        self._save_config()
        open_sinks(self.cfg.log.resolved_sinks(), self.run_dir, self.is_main, into=self.sinks)
        self._step = 0
        if self.run_lock.taken_over is not None:
            self._record_problem("stale_lock_taken_over", self.run_lock.taken_over["message"],
                                 previous=self.run_lock.taken_over["previous"])
        try:
            with GracefulStop() as stopper:
                try:
                    return self._run(stopper)
                finally:  # a second Ctrl-C lets a background save finish first
                    with stopper.protect("finishing the checkpoint save"):
                        self.checkpointer.wait()
        except BaseException as err:
            self.sinks.write_event(self._step, "error", message=f"{type(err).__name__}: {err}")
            raise
        finally:  # also on errors (NaN loss, bad data): finish pending async saves
            self.checkpointer.wait()
            self.checkpointer.close()
            self.sinks.close()
            self.run_lock.release()

    def _run(self, stopper: GracefulStop) -> dict[str, Any]:
        cfg = self.cfg
        train_iterator = self.train_data.iterator()
        step = self._step = self._resume(train_iterator)
        self.sinks.write_event(step, "start", total_steps=self.total_steps, algo=cfg.algo)
        if self.is_main:  # after the resume: a run refused for bad input prints its one line alone
            log.info("%s", host_malloc.describe())
        if step:
            self.sinks.write_event(step, "resume", from_step=step)
        window = _MetricsWindow()
        divergence = health.DivergenceWatch(cfg.health, self._record_problem)
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        stopped_early = False
        while step < self.total_steps:
            if not self._optimizer_step(train_iterator, window):
                log.info("training data exhausted at step %d", step)
                break
            step = self._step = step + 1
            if step % cfg.log.every_steps == 0 or step == self.total_steps:
                self._check_finite(window, step)
                last_train = window.read()
                last_train.update(divergence.observe(step, last_train["loss"]))
                last_train.update(self.data_report.metrics(self.train_data))
                last_train.update(self.compiles.metrics())
                last_train["learning_rate"] = self.learning_rate(step * self.algo.updates_per_step - 1)
                self.sinks.write_scalars(step, last_train, "train")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                last_eval = self._evaluate_and_publish(step)
            if self.generation_eval is not None and self.generation_eval.due(step, self.total_steps):
                self.generation_eval.run(step, self.state)
            stopped_early = stopper.should_stop()  # agreed across processes
            if stopped_early or self.checkpointer.should_save(step, time.time()):
                self._check_finite(window, step)
                with stopper.protect("saving the checkpoint"):
                    self._save(step, train_iterator)
            if stopped_early:
                log.info("stop requested: saved step %d, exiting", step)
                self.sinks.write_event(step, "stop", signal=getattr(stopper.received, "name", None))
                break
        if not stopped_early:
            last_eval = self._finish(step, train_iterator, window, stopper)
        return {"step": step, "train": last_train, "eval": last_eval, "stopped_early": stopped_early}

    def _resume(self, train_iterator) -> int:
        """Restores the newest intact checkpoint, if any; returns the step to continue from."""
        resumed = resume_latest(
            self.checkpointer, abstract_state=_abstract(self.state), data_iterator=train_iterator,
            restore_data=not self.cfg.data.reset_iterator_on_restore, current_config=config_to_dict(self.cfg),
            on_event=self._record_problem)
        if resumed is None:
            return 0
        self.state, step = resumed
        return step

    def _optimizer_step(self, train_iterator, window: "_MetricsWindow") -> bool:
        """Runs ``grad_accum_steps`` micro-batches; False when the data ran out."""
        for _ in range(self.cfg.optim.grad_accum_steps):
            try:
                host_batch = next(train_iterator)
            except StopIteration:
                return False
            batch = shard_batch(host_batch, self.mesh)
            if self.algo.rollout is not None:
                batch, metrics = self._rollout_and_train(batch)
            else:
                self.state, metrics = self.train_step(self.state, batch, self.algo.frozen)
            # Counted on the global batch: the host batch holds only this process's rows.
            window.add(metrics, batch["segment_ids"])
        return True

    def _rollout_and_train(self, batch: dict) -> tuple[dict, dict]:
        """RL: the algorithm's host-side rollout, then the jitted update. The rollout
        synchronises with the device anyway (it decodes and scores replies), so the
        update is waited for too, to report the time split per iteration."""
        started = time.monotonic()
        batch, host_metrics = self.algo.rollout(self.state, batch, self.algo.frozen, "train", 0)
        rolled_out = time.monotonic()
        self.state, metrics = self.train_step(self.state, batch, self.algo.frozen)
        jax.block_until_ready(metrics)
        host_metrics = {**host_metrics, "time/rollout_s": rolled_out - started,
                        "time/training_s": time.monotonic() - rolled_out}
        return batch, {**metrics, **{name: jnp.float32(value) for name, value in host_metrics.items()}}

    def _evaluate_and_publish(self, step: int, final: bool = False) -> dict[str, float]:
        metrics = self.evaluate()
        self.sinks.write_scalars(step, metrics, "eval")
        self.sinks.write_event(step, "eval", final=final)
        return metrics

    def _save(self, step: int, train_iterator) -> None:
        if self.checkpointer.save(step, self.state, train_iterator, config_to_dict(self.cfg), force=True):
            self.sinks.write_event(step, "checkpoint", path=str(self.checkpointer.directory / str(step)))

    def _finish(self, step: int, train_iterator, window: "_MetricsWindow", stopper: GracefulStop) -> dict:
        """Final eval, final checkpoint, export."""
        self._check_finite(window, step)
        last_eval = self._evaluate_and_publish(step, final=True)
        if self.checkpointer.latest_step() != step:
            with stopper.protect("saving the checkpoint"):
                self._save(step, train_iterator)
        export_dir = None
        if self.cfg.export:
            export_dir = self.run_dir / "export"
            folders = self.algo.export(self.state, str(export_dir)) or [str(export_dir)]
            if self.is_main:
                finish_folders(list(map(Path, folders)), self.tokenizer)
                for folder in map(Path, folders):
                    log.info("exported %s to %s", "a PEFT adapter" if (folder / "adapter_config.json").exists()
                             else "a Hugging Face folder", folder)
        if self.generation_eval is not None:
            if export_dir is not None:
                self.generation_eval.run_on(export_dir, step)
            else:
                self.generation_eval.run(step, self.state)
        self.sinks.write_event(step, "finish", export=None if export_dir is None else str(export_dir))
        return last_eval


class _MetricsWindow:
    """Step metrics summed on device between logging points: the host fetches
    them once per interval instead of blocking on every step.

    It also keeps the host at most one step ahead of the devices: ``add`` waits
    for the step before the one it adds. XLA:CPU lets a device hold 32
    computations in flight (``max_inflight_computations_per_device``); with more
    queued, one device's launch of a collective (the train step's all-reduce)
    can wait behind computations that need that step's result, and the process
    hangs until XLA aborts it ("only 7 of 8 threads arrived"). Seen with 8 CPU
    devices when the host ran 20 steps ahead (docs/dev-notes/suite.md, session 9).
    One step in flight still overlaps the host's next batch with the device's
    step on every platform."""

    def __init__(self) -> None:
        self._window: dict | None = None  # _window_add's running result since the last read
        self._earlier: dict | None = None  # the finite flags of the windows before it
        self._reset()

    def _reset(self) -> None:
        if self._window is not None:
            self._earlier = {"finite": self.finite, "loss_finite": self.loss_finite}
        self._window = None
        self._count = 0
        self._start = time.monotonic()

    def _flag(self, name: str) -> jax.Array | None:
        parts = [flags[name] for flags in (self._earlier, self._window) if flags is not None]
        return parts[0] if len(parts) == 1 else (parts[0] & parts[1] if parts else None)

    @property
    def finite(self) -> jax.Array | None:
        """Device bool: every step's loss and updated state finite so far (None before any step)."""
        return self._flag("finite")

    @property
    def loss_finite(self) -> jax.Array | None:
        """Device bool: every step's loss finite so far."""
        return self._flag("loss_finite")

    def add(self, metrics: dict, segment_ids: jax.Array) -> None:
        """One step's metrics (device scalars) and its batch's ``segment_ids`` ``[rows, length]``."""
        previous = self._window
        self._window = _window_add(previous, metrics, segment_ids)
        self._count += 1
        if previous is not None:
            jax.block_until_ready(previous)

    def read(self) -> dict[str, float]:
        """Means since the last read, plus tokens/s; starts a new window."""
        window = jax.device_get(self._window) if self._window is not None else {"sums": {}, "tokens": 0}
        means = {name: float(value) / self._count for name, value in window["sums"].items()}
        # Rates of phases that report ``tokens/NAME`` and ``time/NAME_s`` (RL: generation, training).
        for name in [n for n in means if n.startswith("tokens/")]:
            phase = name.split("/", 1)[1]
            seconds = means.get(f"time/{phase}_s")
            if seconds:
                means[f"tokens_per_s/{phase}"] = means[name] / seconds
        means["tokens_per_s"] = float(window["tokens"]) / max(time.monotonic() - self._start, 1e-9)
        self._reset()
        return means


def train(cfg: TrainConfig) -> dict[str, Any]:
    return Trainer(cfg).run()
