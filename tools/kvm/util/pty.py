"""--tty N: a guest terminal on a pseudo-terminal of its own instead of
lkvm's stdin and stdout, as kvmtool's term.c remaps one (`screen
/dev/pts/N` attaches to it).  Terminal 0 is the console, 1 to 3 the
other UARTs.

lkvm holds the slave side open itself: without that, a master whose
slave nobody has opened yet reads as hung up, and what the guest writes
before the user attaches would be lost.  Held open, it waits in the
pty's buffer (a few KiB, the kernel's); past that, output is dropped
rather than stalling the guest."""

import os
import pty
import tty
from collections.abc import Callable

from kvm import msg
from kvm.errors import LkvmError
from kvm.iothread import IoThread

TERMINALS = 4   # kvmtool's TERM_MAX_DEVS: the console and the PC's other three UARTs
READ_SIZE = 4096


def parse_tty(text: str) -> int:
    try:
        term = int(text)
    except ValueError:
        raise LkvmError(f"--tty {text}: not a terminal number") from None
    if not 0 <= term < TERMINALS:
        raise LkvmError(f"--tty {text}: terminals are 0 to {TERMINALS - 1}")
    return term


class PtyTerminal:
    """One guest terminal on a new pty: write() is the guest's output,
    start(receive) feeds what the user types to the device."""

    def __init__(self, term: int, on_error: Callable[[str], None]) -> None:
        try:
            self.master, self.slave = pty.openpty()
        except OSError as e:
            raise LkvmError(f"--tty {term}: no pseudo-terminal: {e.strerror}") from None
        tty.setraw(self.slave)      # bytes both ways as the guest sends them
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.thread = IoThread(f"tty{term}", on_error)
        msg.info(f"Assigned terminal {term} to pty {self.path}")

    def write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except (BlockingIOError, OSError):
            pass    # nobody reads and the pty's buffer is full: drop it

    def start(self, receive: Callable[[bytes], None]) -> None:
        def read() -> None:
            try:
                data = os.read(self.master, READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if data:
                receive(data)
        self.thread.add(self.master, read, counter=False)
        self.thread.start()

    def close(self) -> None:
        self.thread.wake()
        if self.thread.join(1.0):
            os.close(self.master)
            os.close(self.slave)
