"""Stop cleanly on SIGTERM (preemption, ``scancel``, ``kill``) and Ctrl-C.

Inside ``with GracefulStop() as stop:`` the first SIGTERM or SIGINT only sets
``stop.stop_requested``; the loop finishes its step, saves a checkpoint and
returns normally (exit code 0). A second Ctrl-C raises ``KeyboardInterrupt``
at once for a user who really wants out, except inside ``stop.protect(...)``
(a checkpoint being written): there it is held until the block ends, so the
save finishes before the run exits. The previous handlers come back on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any, Iterator, Sequence

from jaxalign import distributed
from jaxalign.metrics_log import get_logger

log = get_logger("signals")

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Turns stop signals into a flag the training loop polls between steps.

    Python only lets the main thread install signal handlers; elsewhere (a
    notebook's worker thread, a test runner's thread) this becomes a no-op with
    a warning, ``installed`` stays False, and signals keep their old behaviour.
    """

    def __init__(self, signals: Sequence[signal.Signals] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.stop_requested = False
        self.received: signal.Signals | None = None  # the first stop signal seen
        self.installed = False
        self._previous: dict[signal.Signals, Any] = {}
        self._protecting: list[str] = []  # what the open protect() blocks are doing
        self._abort_pending = False

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: stop signals will not be caught for a graceful stop")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None means the handler was not installed from Python; the default is the closest match.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.stop_requested and sig == signal.SIGINT:
            if self._protecting:
                if not self._abort_pending:
                    log.warning("Ctrl-C again: %s first, then exiting (interrupting it would lose the checkpoint)",
                                self._protecting[-1])
                self._abort_pending = True
                return
            raise KeyboardInterrupt
        if self.stop_requested:
            return  # repeated SIGTERMs (schedulers resend them) change nothing
        self.request_stop(sig)
        hint = " (Ctrl-C again to abort now)" if signal.SIGINT in self.signals else ""
        log.warning("received %s: finishing this step, saving a checkpoint, then exiting%s", sig.name, hint)

    @contextlib.contextmanager
    def protect(self, what: str) -> Iterator[None]:
        """A block a second Ctrl-C must not interrupt (``what``: e.g. "finishing the
        checkpoint save"): the abort is held and raised as ``KeyboardInterrupt``
        when the outermost such block ends without an error."""
        self._protecting.append(what)
        try:
            yield
        finally:
            self._protecting.pop()
        if self._abort_pending and not self._protecting:
            self._abort_pending = False
            raise KeyboardInterrupt

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        """Asks for a graceful stop as a signal would (for callers with their own triggers)."""
        self.stop_requested = True
        self.received = self.received or sig

    def should_stop(self) -> bool:
        """``stop_requested`` agreed across processes: True everywhere once any
        process got a signal. Every process must call it at the same point of
        each step (it talks to the coordinator in a multi-process run; in a
        single process it is just ``stop_requested``)."""
        return distributed.any_process_requested("stop", self.stop_requested)
