"""A device's I/O thread: one epoll loop over that device's eventfds
(ioeventfds the kernel signals on guest notifications), each dispatched
to its callback.  vCPUs never wait for device work this way: a
notification is a write the kernel completes without leaving KVM_RUN.

Each device has its own thread, so a backend that blocks in the kernel
(a read nobody answers, an open waiting on a lease) stalls that device
and no other.  Such a thread cannot be interrupted from Python: stop()
gives it a deadline and abandons it past that (it is a daemon thread,
so it never holds up the process's exit).

Work that must not overlap a handler (vhost taking a queue's fds, say)
is handed to the loop with call(): it runs between two handlers."""

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from kvm import msg


class IoThread:
    def __init__(self, name: str, on_error: Callable[[str], None]) -> None:
        self.name = name
        self.on_error = on_error
        self.epoll = select.epoll()
        # Each fd's callback, and whether it is an eventfd whose counter
        # the loop takes.
        self.handlers: dict[int, tuple[Callable[[], None], bool]] = {}
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.epoll.register(self._wake, select.EPOLLIN)
        self._calls: deque[Callable[[], None]] = deque()
        self._call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.epoll.register(self._call, select.EPOLLIN)
        self.thread: threading.Thread | None = None

    def add(self, fd: int, callback: Callable[[], None], counter: bool = True) -> None:
        """Call `callback` when `fd` polls readable.  An eventfd's counter
        is taken first; any other fd (a network back end's socket, say) is
        the callback's to read, and it runs again while data is left."""
        self.handlers[fd] = (callback, counter)
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        self.epoll.unregister(fd)
        del self.handlers[fd]

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop, after the handler it may be in returns
        and before the next; at once when no loop runs (none started
        yet, or this is the loop's own thread)."""
        t = self.thread
        if t is None or not t.is_alive() or t is threading.current_thread():
            fn()
            return
        self._calls.append(fn)
        os.eventfd_write(self._call, 1)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=f"kvm-io-{self.name}",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            for fd, _ in self.epoll.poll():
                if fd == self._wake:
                    return
                if fd == self._call:
                    handler, counter = self._run_calls, True
                elif fd in self.handlers:
                    handler, counter = self.handlers[fd]
                else:
                    # Removed since the poll (by a call() before it in
                    # this batch): its counter is its new reader's now.
                    continue
                try:
                    if counter:
                        os.eventfd_read(fd)
                except BlockingIOError:
                    continue  # another reader took it
                try:
                    handler()
                except Exception as e:  # a device bug must end the VM, not hang it
                    msg.trace(e)
                    self.on_error(f"I/O thread {self.name}: {e}")
                    return

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def wake(self) -> None:
        """Ask the loop to end; it does once its current callback returns."""
        os.eventfd_write(self._wake, 1)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the loop to end; whether it did.
        A thread that did not is stuck in its backend, and its fds, the
        epoll's included, stay open for it."""
        if self.thread is not None:
            self.thread.join(max(timeout, 0))
            if self.thread.is_alive():
                return False
            self.thread = None
        self.epoll.close()
        os.close(self._wake)
        os.close(self._call)
        return True


def stop_all(threads: Iterable[IoThread], timeout: float) -> list[IoThread]:
    """Stop every thread within one shared deadline; the ones abandoned."""
    threads = list(threads)
    for t in threads:
        t.wake()
    deadline = time.monotonic() + timeout
    return [t for t in threads if not t.join(deadline - time.monotonic())]
