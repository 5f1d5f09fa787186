"""Where a run's numbers and messages go: metrics.jsonl, TensorBoard, W&B,
a progress bar, and plain text log lines.

Named ``metrics_log`` rather than ``logging`` so it never shadows the standard
library's ``logging`` (scripts run from inside the package, tools that put the
package directory on ``sys.path``).

Only the main process writes: other processes get inert objects, so calling
code needs no ``if is_main`` around every call.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import jax

LOGGER_NAME = "jaxalign"


# ---------------------------------------------------------------- text lines


class _MainProcessOnly(logging.Filter):
    """Drops records on processes other than 0.

    Before ``jax.distributed.initialize`` every process counts as main: asking
    jax for the process index would start the backends, after which joining
    the distributed system fails.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not jax.distributed.is_initialized() or jax.process_index() == 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test capture, redirects)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _ConciseFormatter(logging.Formatter):
    """``12:04:31 message``; the level is shown only when it is not INFO."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        text = f"{self.formatTime(record, self.datefmt)} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger (or a child of it): INFO and up to stderr, main process only.

    It does not propagate to the root logger, so an application's own logging
    set-up does not print every line twice.
    """
    root = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_ConciseFormatter())
        handler.addFilter(_MainProcessOnly())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root if name is None else root.getChild(name)


# ---------------------------------------------------------------- metrics


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN/inf; null keeps every line parseable by strict readers (jq, JS).
    return value if math.isfinite(value) else None


class MetricsLogger:
    """Writes scalar metrics to ``run_dir/metrics.jsonl`` (always),
    ``run_dir/tensorboard/`` (if ``tensorboard``) and W&B (if ``wandb`` is a
    dict of ``wandb.init`` arguments and the package is installed).

    Each JSONL line is ``{"step": N, "time": unix_seconds, "train/loss": ...}``.
    A resumed run appends; readers should keep the last line of a repeated step.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
        is_main_process: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = is_main_process
        self._jsonl: TextIO | None = None
        self._tensorboard = None
        self._wandb_run = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Line-buffered: a crash loses at most the line being written.
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
        if tensorboard:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tensorboard = EventFileWriter(str(self.run_dir / "tensorboard"), flush_secs=30)
        if wandb is not None:
            self._wandb_run = _start_wandb(dict(wandb), self.run_dir)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        """Records ``metrics`` at ``step`` under ``prefix/`` names (``train/loss``)."""
        if not self.enabled or not metrics:
            return
        scalars = {(f"{prefix}/{name}" if prefix else name): float(value) for name, value in metrics.items()}
        now = time.time()
        record: dict[str, Any] = {"step": int(step), "time": round(now, 3)}
        record.update({name: _finite_or_none(value) for name, value in scalars.items()})
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            self._tensorboard.add_event(_scalar_event(int(step), now, scalars))
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=int(step))

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        self.enabled = False

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scalar_event(step: int, wall_time: float, scalars: Mapping[str, float]):
    """A TensorBoard event of ``simple_value`` scalars (what EventAccumulator.Scalars reads)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values))


def _start_wandb(init_args: dict[str, Any], run_dir: Path):
    try:
        import wandb
    except ImportError:
        get_logger().warning(
            "log.wandb is set but the wandb package is not installed (pip install wandb); "
            "metrics go to metrics.jsonl and TensorBoard only"
        )
        return None
    init_args.setdefault("dir", str(run_dir))
    return wandb.init(**init_args)


# ---------------------------------------------------------------- progress bar


def _clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _rate_text(per_second: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= threshold:
            return f"{per_second / threshold:.1f}{suffix}"
    return f"{per_second:.0f}"


class ProgressBar:
    """One status line: ``step 120/2000 | loss 0.4312 | 1.2k tok/s | 00:41<10:12``.

    On a terminal it redraws in place with ``\\r``. On anything else (a log
    file, a cluster's captured stdout) it prints a full line at most every
    ``min_interval_s`` seconds, and always the last step, so logs stay short.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        *,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._started = clock()
        self._last_printed = -math.inf
        self._line = ""
        self._line_printed = True
        isatty = getattr(self.stream, "isatty", None)
        self.is_tty = bool(isatty and isatty())

    def render(self, step: int, loss: float | None = None, tokens_per_s: float | None = None) -> str:
        parts = [f"step {step}/{self.total_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens_per_s is not None:
            parts.append(f"{_rate_text(tokens_per_s)} tok/s")
        elapsed = self._clock() - self._started
        done = step - self.start_step
        eta = _clock_text((self.total_steps - step) * elapsed / done) if done > 0 else "?"
        parts.append(f"{_clock_text(elapsed)}<{eta}")
        return " | ".join(parts)

    def update(self, step: int, *, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        self._line = self.render(step, loss, tokens_per_s)
        self._line_printed = False
        if self.is_tty:
            self._write("\r" + self._line + "\x1b[K")
            self._line_printed = True
            return
        now = self._clock()
        if now - self._last_printed >= self.min_interval_s or step >= self.total_steps:
            self._write(self._line + "\n")
            self._last_printed = now
            self._line_printed = True

    def message(self, text: str) -> None:
        """A one-off line (checkpoint saved, eval results) that the bar does not overwrite."""
        if self.is_tty:
            self._write("\r\x1b[K" + text + "\n" + self._line)
        else:
            self._write(text + "\n")

    def close(self) -> None:
        if self.is_tty and self._line:
            self._write("\n")
        elif not self._line_printed:
            self._write(self._line + "\n")
        self._line, self._line_printed = "", True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
