"""The device I/O thread's loop: work handed to it with call() runs
between handlers, and an fd taken out of it (by vhost) keeps its counter
for its new reader even when the same poll had already seen it."""

import os
import threading

import pytest

from kvm.iothread import IoThread


@pytest.fixture
def io():
    errors: list[str] = []
    t = IoThread("test", errors.append)
    fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(3)]
    yield t, fds
    t.wake()
    assert t.join(10)
    for fd in fds:
        os.close(fd)
    assert errors == []


def test_call_runs_after_the_running_handler_returns(io):
    t, (a, _, _) = io
    entered, release, done = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def handler() -> None:
        entered.set()
        release.wait(10)
        order.append("handler")
    t.add(a, handler)
    t.start()
    os.eventfd_write(a, 1)
    assert entered.wait(10)
    t.call(lambda: order.append("call"))
    t.call(done.set)
    release.set()
    assert done.wait(10)
    assert order == ["handler", "call"]


def test_call_without_a_running_loop_runs_at_once(io):
    t, _ = io
    ran: list[bool] = []
    t.call(lambda: ran.append(True))
    assert ran == [True]


def test_an_fd_removed_after_the_poll_keeps_its_count(io):
    t, (a, b, c) = io
    ran_b, done = [], threading.Event()
    t.add(a, lambda: t.remove(b))      # b's new reader takes it, as vhost does a kick
    t.add(b, lambda: ran_b.append(True))
    t.add(c, done.set)
    for fd in (a, b, c):               # all ready before the first poll, in this order
        os.eventfd_write(fd, 1)
    t.start()
    assert done.wait(10)
    assert ran_b == [] and os.eventfd_read(b) == 1
