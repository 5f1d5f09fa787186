"""Which checkpoint a run resumes from, and what it says about it.

``resume_latest`` walks the checkpoints newest first. Each is verified
(``Checkpointer.verify``) and checked against the current model's shapes
before its arrays are read; a damaged one is reported (log line and an event
for the sinks, naming the checkpoint and what is wrong) and, with
``checkpoint.fallback_to_intact`` (the default), set aside as
``<step>.damaged`` while the newest intact one is restored. A changed
architecture is not damage: it stops with the parameters whose shapes differ
and the config keys that changed.
"""

from __future__ import annotations

from typing import Any, Callable

from jaxalign import distributed
from jaxalign.checkpoint import (
    RESET_DATA_HINT,
    CheckpointDamagedError,
    Checkpointer,
    DataIterator,
    DataStateMismatchError,
)
from jaxalign.checkpoint_verify import shape_differences
from jaxalign.configlib import ConfigError
from jaxalign.metrics_log import get_logger

log = get_logger("resume")

_SHOWN = 4  # differing parameters named in a message


class ArchitectureMismatchError(ConfigError):
    """The checkpoint was saved by a model of another shape than the configured one."""


def changed_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``a.b: old -> new`` for every leaf that differs between two config dicts."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new and not (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and list(old) == list(new)):
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def resume_latest(
    checkpointer: Checkpointer,
    *,
    abstract_state: Any,
    data_iterator: DataIterator | None,
    restore_data: bool,
    current_config: dict[str, Any],
    on_event: Callable[..., None] | None = None,
) -> tuple[Any, int] | None:
    """Restores the newest intact checkpoint: ``(state, step)``, or None when there is none.

    Raises ``ArchitectureMismatchError`` when the model changed shape, and
    ``CheckpointDamagedError`` when no checkpoint is usable (or the newest is
    damaged and ``checkpoint.fallback_to_intact`` is off). ``on_event(kind, message,
    step, **fields)`` hears of damage and fallbacks (the trainer sends them to its sinks).
    """
    on_event = on_event or (lambda *args, **fields: None)
    damaged: list[tuple[int, str]] = []
    for step in reversed(checkpointer.all_steps()):
        problems = checkpointer.verify(step, with_data=restore_data and data_iterator is not None)
        if distributed.all_processes(not problems):
            problems, state, saved_config = _restore(checkpointer, step, abstract_state, data_iterator, restore_data,
                                                     current_config)
            if distributed.all_processes(not problems):
                _report_restored(checkpointer, step, damaged, saved_config, current_config, restore_data,
                                 data_iterator, on_event)
                return state, step
        reason = "; ".join(problems) or "damaged on another process (see its log)"
        damaged.append((step, reason))
        location = checkpointer.directory / str(step)
        log.warning("checkpoint %s is damaged: %s", location, reason)
        on_event("checkpoint_damaged", f"checkpoint {location} is damaged: {reason}", step)
        if not checkpointer.cfg.fallback_to_intact:
            raise CheckpointDamagedError(
                f"checkpoint {location} is damaged: {reason}. To resume from the newest intact checkpoint "
                f"instead, set checkpoint.fallback_to_intact=true (this one is then renamed {step}.damaged); "
                f"or move {location} away yourself" + _data_hint(reason, step))
    if damaged:
        listed = "; ".join(f"step {step}: {reason}" for step, reason in damaged)
        raise CheckpointDamagedError(
            f"no intact checkpoint to resume from in {checkpointer.directory} ({listed}). Move the damaged "
            "checkpoints away (or delete them) to start this run from scratch, or use another run_dir"
            + _data_hint(damaged[0][1], damaged[0][0]))
    return None


def _restore(checkpointer: Checkpointer, step: int, abstract_state: Any, data_iterator, restore_data: bool,
             current_config: dict[str, Any]) -> tuple[list[str], Any, dict | None]:
    """``(problems, state, saved_config)``: the arrays' bytes are only checked by reading them."""
    try:
        saved_shapes = checkpointer.saved_state_shapes(step)
    except Exception as err:  # noqa: BLE001  Orbax/TensorStore raise many kinds for unreadable bytes
        return [f"its array metadata could not be read ({_first_line(err)})"], None, None
    _check_architecture(checkpointer, step, saved_shapes, abstract_state, current_config)
    try:
        state, saved_config = checkpointer.restore(step, abstract_state=abstract_state, data_iterator=data_iterator,
                                                   restore_data=restore_data)
    except DataStateMismatchError:
        raise
    except Exception as err:  # noqa: BLE001
        return [f"its arrays could not be read ({_first_line(err)})"], None, None
    return [], state, saved_config


def _data_hint(reason: str, step: int) -> str:
    if "data-iterator state" not in reason:
        return ""
    return (f". If only the data position is lost you can also resume step {step} with {RESET_DATA_HINT}: "
            f"batches seen before step {step} are then seen again")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def _check_architecture(checkpointer: Checkpointer, step: int, saved_shapes: Any, abstract_state: Any,
                        current: dict[str, Any]) -> None:
    differences = shape_differences(saved_shapes, abstract_state)
    if not differences:
        return
    shown = "; ".join(differences[:_SHOWN]) + (f"; and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else "")
    model_changes = [change for change in changed_keys(checkpointer.saved_config(step) or {}, current)
                     if change.startswith(("model.", "ref_model.", "algo:"))]
    changed = ("config keys that differ: " + "; ".join(model_changes) if model_changes else
               "the run config's model section is unchanged, so the model folder's config.json must differ")
    raise ArchitectureMismatchError(
        f"checkpoint {checkpointer.directory / str(step)} holds a model of another shape than the configured one "
        f"({shown}); {changed}. Resume with the model settings it was saved with, or start a new run_dir")


def _report_restored(checkpointer, step, damaged, saved_config, current_config, restore_data, data_iterator,
                     on_event) -> None:
    log.info("resumed from checkpoint at step %d in %s", step, checkpointer.directory)
    if damaged:
        for bad_step, _ in damaged:
            target = checkpointer.set_aside(bad_step)
            log.warning("set the damaged checkpoint %d aside as %s", bad_step, target)
        skipped = ", ".join(str(bad_step) for bad_step, _ in damaged)
        message = f"resumed from step {step}, the newest intact checkpoint; damaged step(s) {skipped} set aside"
        log.warning(message)
        on_event("checkpoint_fallback", message, step, damaged=[s for s, _ in damaged])
    if data_iterator is not None and not restore_data:
        log.warning("data.reset_iterator_on_restore: the data position was not restored; the data starts again "
                    "from its first batch (batches seen before step %d are seen again)", step)
    changed = changed_keys(saved_config or {}, current_config)
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(changed))
