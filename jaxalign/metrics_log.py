"""Plain text for people: the package's log lines and the progress bar.

(Machine-readable output, metrics.jsonl, TensorBoard, tables and events, goes
through the sinks in ``jaxalign.sinks``; the console sink drives this bar.)

Named ``metrics_log`` rather than ``logging`` so it never shadows the standard
library's ``logging`` (scripts run from inside the package, tools that put the
package directory on ``sys.path``).

Log lines are written by the main process only.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, TextIO

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

    Why not tqdm or rich: off a terminal tqdm still writes ``\\r``-separated
    redraws into the log file (one ever-growing line), and rich's live display
    prints nothing until the end; training logs on clusters are files. Both
    would also need their own way to interleave eval and checkpoint messages.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        *,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "step",
        rate_unit: str = "tok",
    ) -> None:
        self.unit, self.rate_unit = unit, rate_unit  # "rows 40/960 | 3.1 rows/s" for row-producing commands
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
        parts = [f"{self.unit} {step}/{self.total_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens_per_s is not None:
            rate = _rate_text(tokens_per_s) if tokens_per_s >= 10 else f"{tokens_per_s:.2f}"
            parts.append(f"{rate} {self.rate_unit}/s")
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
