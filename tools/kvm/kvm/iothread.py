"""The device I/O thread: one epoll loop over eventfds (ioeventfds the
kernel signals on guest notifications), each dispatched to its device's
callback.  vCPUs never wait for device work this way: a notification is
a write the kernel completes without leaving KVM_RUN."""

import os
import select
import threading
import traceback
from collections.abc import Callable


class IoThread:
    def __init__(self, on_error: Callable[[str], None]) -> None:
        self.on_error = on_error
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.epoll.register(self._wake, select.EPOLLIN)
        self.thread: threading.Thread | None = None

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        self.handlers[fd] = callback
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        self.epoll.unregister(fd)
        del self.handlers[fd]

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="kvm-io", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            for fd, _ in self.epoll.poll():
                if fd == self._wake:
                    return
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue  # another reader took it
                handler = self.handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception as e:  # a device bug must end the VM, not hang it
                    traceback.print_exc()
                    self.on_error(f"I/O thread: {e}")
                    return

    def stop(self) -> None:
        if self.thread is not None:
            os.eventfd_write(self._wake, 1)
            self.thread.join()
            self.thread = None
