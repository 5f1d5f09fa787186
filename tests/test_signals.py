"""GracefulStop: signals become a flag, a second Ctrl-C aborts, handlers come back."""

import os
import signal
import threading

import pytest

from jaxalign.signals import GracefulStop


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    def previous_term(signum, frame):
        raise AssertionError("the previous SIGTERM handler must not run inside GracefulStop")

    old_term = signal.signal(signal.SIGTERM, previous_term)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        with GracefulStop() as stop:
            assert stop.installed and not stop.stop_requested
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next bytecode on the main thread
            assert stop.stop_requested and stop.received == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)  # a resent SIGTERM changes nothing
            assert stop.should_stop()  # single process: the local flag
        assert signal.getsignal(signal.SIGTERM) is previous_term
        assert signal.getsignal(signal.SIGINT) is old_int
        assert not stop.installed
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_second_sigint_raises_keyboard_interrupt():
    # The handler to restore is whatever was there: Python's default in a terminal, SIG_IGN when
    # the suite runs as a background job (the shell ignores SIGINT for it).
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.stop_requested and stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_after_sigterm_also_aborts():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == signal.SIGTERM


def test_off_the_main_thread_it_is_a_harmless_no_op():
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def body():
        with GracefulStop() as stop:
            seen["installed"] = stop.installed
            stop.request_stop()
            seen["requested"] = stop.stop_requested

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"installed": False, "requested": True}
    assert signal.getsignal(signal.SIGTERM) is before
