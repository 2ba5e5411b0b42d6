"""The user's terminal: the guest console's output on stdout, keystrokes
into the guest.  On a tty it runs raw, so Ctrl-C reaches the guest;
Ctrl-A x leaves lkvm, as in kvmtool, and Ctrl-A Ctrl-A sends one Ctrl-A."""

import os
import sys
import termios
import threading
import tty
from collections.abc import Callable

ESCAPE = b"\x01"  # Ctrl-A
QUIT = b"x"


class Terminal:
    def __init__(self, on_quit: Callable[[], None]) -> None:
        self.on_quit = on_quit
        self.saved: list | None = None
        self.escaped = False

    def write(self, data: bytes) -> None:
        try:
            os.write(sys.stdout.fileno(), data)
        except (BrokenPipeError, BlockingIOError):
            pass  # nobody is reading: the guest must not stall or die for it

    def start(self, receive: Callable[[bytes], None]) -> None:
        """Feed stdin to `receive` from a thread of its own."""
        if os.isatty(0):
            self.saved = termios.tcgetattr(0)
            tty.setraw(0)
        threading.Thread(target=self._reader, args=(receive,), name="kvm-term",
                         daemon=True).start()

    def _reader(self, receive: Callable[[bytes], None]) -> None:
        while True:
            try:
                data = os.read(0, 4096)
            except OSError:
                return
            if not data:
                return
            data = self._filter(data) if self.saved is not None else data
            if data:
                receive(data)

    def _filter(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            ch = bytes([byte])
            if self.escaped:
                self.escaped = False
                if ch == QUIT:
                    self.on_quit()
                    return bytes(out)
                out += ch
            elif ch == ESCAPE:
                self.escaped = True
            else:
                out += ch
        return bytes(out)

    def close(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            self.saved = None
