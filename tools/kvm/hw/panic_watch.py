"""Tell a guest kernel's panic from a clean reboot.

kvmtool's command line has panic=1: a panicking Linux resets the machine
one second later through the same i8042 line as `reboot`.  Until lkvm
has a pvpanic device, the console is where the two differ: the panic
banner passes through it on its way to the user."""

from collections.abc import Callable

BANNER = b"Kernel panic - not syncing"


class PanicWatch:
    """Wraps the console's output; `panicked` once the banner went by."""

    def __init__(self, out: Callable[[bytes], None]) -> None:
        self.out = out
        self.panicked = False
        self._tail = b""

    def __call__(self, data: bytes) -> None:
        self.out(data)
        if not self.panicked:
            seen = self._tail + bytes(data)
            self.panicked = BANNER in seen
            self._tail = seen[-len(BANNER):]
