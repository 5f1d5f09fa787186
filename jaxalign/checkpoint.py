"""Checkpoints: train state + data iterator position + run config, as one
Orbax composite checkpoint per step.

Layout of ``<dir>/<step>/``::

    state/    the train state pytree (params, optimizer state, step, rng), sharded
    data/     process_<i>-of-<n>.json: each process's data iterator state
    config/   the resolved run config as JSON

Saves are atomic: Orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames
it to ``<step>`` only once every item is written, so a crash mid-save leaves the
previous step as the latest. Left-over temporary folders are removed the next
time a ``Checkpointer`` opens the directory.

A checkpoint damaged after it was written (a disk fault, a file deleted or
truncated by hand, a copy interrupted) is found by ``verify`` before anything
is restored; ``set_aside`` renames it ``<step>.damaged`` so it is neither
restored nor overwritten (``jaxalign/resume.py`` decides what to resume from).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Protocol

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxalign import checkpoint_verify, distributed
from jaxalign.metrics_log import get_logger

log = get_logger("checkpoint")

RESET_DATA_HINT = (
    "--set data.reset_iterator_on_restore=true (restores the model and optimizer "
    "and restarts the data epoch from the beginning)"
)


@dataclasses.dataclass
class CheckpointConfig:
    """When and where to save. A save happens at whichever of ``every_steps``
    and ``every_minutes`` comes first (0 turns either off), and always at the
    end of a run and on a stop signal."""

    dir: str | None = None  # default: <run_dir>/checkpoints; local path or gs://...
    every_steps: int = 0
    every_minutes: float = 30.0
    keep: int = 3  # keep the last K checkpoints; 0 = keep all
    async_save: bool = True  # write in the background; the loop blocks only for device->host copies
    # On resume, a damaged latest checkpoint is set aside and the newest intact
    # one restored (logged); false: stop with an error naming the damage.
    fallback_to_intact: bool = True

    def __post_init__(self) -> None:
        for name in ("every_steps", "every_minutes", "keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"checkpoint.{name} must be >= 0, got {getattr(self, name)}")


class DataIterator(Protocol):
    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class DataStateMismatchError(ValueError):
    """The checkpoint's data iterator state was written by a different number of processes."""


class CheckpointDamagedError(RuntimeError):
    """No checkpoint could be restored: the ones there are damaged (or fallback is off)."""


# ---------------------------------------------------------------- the data item


def _data_state_file(directory: epath.Path, index: int, count: int) -> epath.Path:
    return directory / f"process_{index}-of-{count}.json"


class DataStateHandler(ocp.CheckpointHandler):
    """Writes each process's data iterator state to its own JSON file.

    Unlike ``grain.checkpoint.CheckpointHandler`` it takes the state already
    captured (so an async save records the position at save time, not later)
    and works for any iterator with ``get_state() -> dict``.
    """

    def save(self, directory: epath.Path, args: "DataStateSave") -> None:
        path = _data_state_file(epath.Path(directory), jax.process_index(), jax.process_count())
        path.write_text(args.state_json)

    def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> dict:
        directory = epath.Path(directory)
        index, count = jax.process_index(), jax.process_count()
        path = _data_state_file(directory, index, count)
        if not path.exists():
            raise _mismatch_error(directory, index, count)
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state_json: str


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


def _mismatch_error(directory: epath.Path, index: int, count: int) -> DataStateMismatchError:
    found = sorted(p.name for p in directory.glob("process_*-of-*.json")) if directory.exists() else []
    counts = sorted({int(m.group(1)) for name in found if (m := re.search(r"-of-(\d+)\.json$", name))})
    if counts:
        saved = f"was saved by {', '.join(map(str, counts))} process(es)"
    else:
        saved = "holds no data iterator state"
    return DataStateMismatchError(
        f"the data iterator state in {directory} {saved}, but this run has {count} process(es) "
        f"(this is process {index}). Each process's position in the data is saved separately and "
        f"cannot be remapped onto another process count. To resume anyway, restart the data "
        f"from the beginning of the epoch with {RESET_DATA_HINT}, or resume with the original "
        f"number of processes."
    )


def _capture_data_state(data_iterator: DataIterator) -> str:
    state = data_iterator.get_state()
    try:
        return json.dumps(state)
    except TypeError as err:
        raise TypeError(
            f"{type(data_iterator).__name__}.get_state() must return JSON-serialisable data "
            f"to be checkpointed: {err}"
        ) from err


def _jsonable(config: Any) -> Any:
    # Paths, enums and the like become strings: the saved config is for reading back, not for pickling.
    return json.loads(json.dumps(config, default=str))


# ---------------------------------------------------------------- the checkpointer


def _absolute(path: str | os.PathLike) -> epath.Path:
    text = os.fspath(path)
    # Orbax needs absolute paths; remote URLs (gs://, s3://) already are.
    return epath.Path(text if "://" in text else os.path.abspath(text))


class Checkpointer:
    """One Orbax ``CheckpointManager`` over ``<dir>/<step>`` checkpoints.

    Every process of a multi-process run must make the same calls in the same
    order: ``save`` and ``restore`` are collective, and ``should_save`` agrees
    across processes (process 0's clock decides time-based saves).
    """

    def __init__(self, cfg: CheckpointConfig, run_dir: str | os.PathLike, read_only: bool = False) -> None:
        """``read_only``: for a reader beside a trainer (``jaxalign export``): it creates, saves and
        cleans up nothing, so a save the trainer has in flight is left alone."""
        self.cfg = cfg
        self.directory = _absolute(cfg.dir if cfg.dir else os.path.join(os.fspath(run_dir), "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep or None,
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=not read_only,  # remove what an interrupted save left behind
            read_only=read_only,
            create=not read_only,
            **({"save_interval_steps": 0} if read_only else {}),  # orbax warns unless a reader says so
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_save_time = time.time()
        self._decided: tuple[int, bool] | None = None  # (step, should_save) so save() does not re-ask

    # ------------------------------------------------------------ saving

    def should_save(self, step: int, now: float | None = None) -> bool:
        """True when ``step`` is a multiple of ``every_steps`` or ``every_minutes``
        have passed (``now`` in ``time.time()`` seconds) since the last save."""
        if self._decided is not None and self._decided[0] == step:
            return self._decided[1]
        due = self.cfg.every_steps > 0 and step > 0 and step % self.cfg.every_steps == 0
        if self.cfg.every_minutes > 0:
            now = time.time() if now is None else now
            time_due = now - self._last_save_time >= self.cfg.every_minutes * 60
            # Clocks differ between hosts; all must agree or the collective save deadlocks.
            due = distributed.main_process_decides("checkpoint_due", time_due) or due
        self._decided = (step, due)
        return due

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: DataIterator | None,
        config_dict: dict[str, Any] | None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves ``state``, the iterator's position and the config at ``step``.

        Without ``force`` it saves only if ``should_save(step)``. Returns whether
        a save started (a step already on disk is never overwritten). Async by
        default: returns once the arrays are copied off the devices, so the
        caller may donate or overwrite ``state`` right away.
        """
        if not force and not self.should_save(step, time.time()):
            return False
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already exists in %s; not saving again", step, self.directory)
            return False
        items: dict[str, ocp.args.CheckpointArgs] = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = DataStateSave(_capture_data_state(data_iterator))
        if config_dict is not None:
            items["config"] = ocp.args.JsonSave(_jsonable(config_dict))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._last_save_time = time.time()
        suffix = " (finishing in the background)" if self.cfg.async_save else ""
        log.info("checkpoint saved at step %d -> %s%s", step, self.directory / str(step), suffix)
        return True

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        self._manager.wait_until_finished()

    # ------------------------------------------------------------ restoring

    def latest_step(self) -> int | None:
        """The newest finished (or in-flight) checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def verify(self, step: int, *, with_data: bool = True) -> list[str]:
        """What is wrong with checkpoint ``step``, cheaply (metadata and file
        presence; array bytes are checked when restored): [] when intact."""
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():
            return [f"{step_dir} is not a folder"]
        problems = checkpoint_verify.state_problems(step_dir / "state")
        if (step_dir / "config").exists():
            problem = checkpoint_verify.json_problem(step_dir / "config" / "metadata", "its saved config")
            problems += [problem] if problem else []
        if with_data:
            data_dir = step_dir / "data"
            problems += checkpoint_verify.data_problems(
                data_dir, _data_state_file(data_dir, jax.process_index(), jax.process_count()))
        return problems

    def saved_state_shapes(self, step: int) -> Any:
        """The saved train state as a pytree of array metadata (``.shape``, ``.dtype``)."""
        return ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")

    def saved_config(self, step: int) -> dict[str, Any] | None:
        """The run config saved with ``step`` (None for a checkpoint without one)."""
        path = self.directory / str(step) / "config" / "metadata"
        return json.loads(path.read_text()) if path.exists() else None

    def restore_params(self, step: int, sharding: jax.sharding.Sharding) -> Any:
        """The train state's ``params`` alone at ``step`` (optimizer state and the rest are not
        read), every array placed with ``sharding``: for reading a run's model back
        (``jaxalign export``) without rebuilding its algorithm."""
        saved = self.saved_state_shapes(step)["params"]
        abstract = jax.tree.map(lambda meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding), saved)
        restored = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item={"params": abstract}, partial_restore=True,
                                        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract})))
        return restored["params"]

    def set_aside(self, step: int) -> epath.Path:
        """Renames a damaged checkpoint ``<step>.damaged`` (kept for inspection,
        never restored or overwritten); process 0 renames, every process waits."""
        self.wait()
        target = self.directory / f"{step}.damaged"
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.directory / f"{step}.damaged-{suffix}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        distributed.main_process_decides("checkpoint_set_aside", True)  # the others wait for the rename
        self._manager.reload()
        return target

    def restore(
        self,
        step: int | None = None,
        *,
        abstract_state: Any,
        data_iterator: DataIterator | None = None,
        restore_data: bool = True,
    ) -> tuple[Any, dict[str, Any] | None]:
        """Restores the train state onto ``abstract_state``'s shardings and returns
        ``(state, config_dict)``; also rewinds ``data_iterator`` to the saved position.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct(shape, dtype,
        sharding=...)`` with the same structure as the saved state; its shardings
        may use another mesh or device count than the saving run's. With
        ``restore_data=False`` (or no iterator) the iterator is left untouched:
        the way out when the process count changed.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        self.wait()
        step_dir = self.directory / str(step)
        # Small items first: a data-state mismatch fails before the large state read.
        small: dict[str, ocp.args.CheckpointArgs] = {}
        if (step_dir / "config").exists():
            small["config"] = ocp.args.JsonRestore()
        if data_iterator is not None and restore_data:
            if not (step_dir / "data").exists():
                raise _mismatch_error(step_dir / "data", jax.process_index(), jax.process_count())
            small["data"] = DataStateRestore()
        restored_small = self._manager.restore(step, args=ocp.args.Composite(**small)) if small else {}
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        if "data" in small:  # only once the state restored: a damaged state leaves the iterator untouched
            assert data_iterator is not None
            data_iterator.set_state(restored_small["data"])
            if hasattr(data_iterator, "start_prefetch"):  # grain DatasetIterator
                data_iterator.start_prefetch()
        self._last_save_time = time.time()
        self._decided = None
        return restored["state"], (restored_small.get("config") if small else None)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Waits for background saves and releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
