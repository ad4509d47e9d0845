"""Ctrl-C during a sync is acted on between two polls of the job, never inside a database call."""

import os
import signal

import pytest

from ghetl.pipeline import interrupts


def test_a_signal_is_recorded_and_raised_at_check():
    with interrupts.deferred() as pending:
        os.kill(os.getpid(), signal.SIGINT)  # handled here, in the main thread, before kill returns
        assert pending.received == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            pending.check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_not_checked_is_raised_on_the_way_out():
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_while_stopping_raises_at_once():
    with interrupts.deferred() as pending:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert pending.received == []


def test_a_signal_left_to_the_system_keeps_its_behaviour():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with interrupts.deferred():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
