"""Legacy PC ports nothing in lkvm models but guests touch anyway, claimed
as kvmtool claims them (its x86/ioport.c): writes vanish, reads float high.
Two more are kvmtool's own: a debug port at 0xe0 that reports accesses
under --debug-ioport, and SeaBIOS's debug console at 0x402, whose bytes go
to the console.

Unclaimed, each access still works (the bus reads all ones and drops
writes) but takes the bus's slow miss path, and Linux writes some of these
on every I/O delay or probe.  The PIC and PIT ports kvmtool also lists are
served by KVM's in-kernel irqchip and never reach lkvm.
"""

import sys
import threading
from collections.abc import Callable

from kvm.bus import Bus

# (first port, count, value a read returns)
DUMMY_PORTS = (
    (0x0000, 0x20, 0xFF),   # DMA controller 1
    (0x0092, 1, 0x02),      # PS/2 system control port A: the A20 gate, always on
    (0x00C0, 0x20, 0xFF),   # DMA controller 2
    (0x00ED, 1, 0xFF),      # the port Linux's io_delay=0xed writes to wait
    (0x00F0, 2, 0xFF),      # math coprocessor
    (0x0278, 3, 0xFF),      # parallel port LPT2
    (0x0378, 3, 0xFF),      # parallel port LPT1
    (0x03D4, 2, 0xFF),      # colour VGA CRT controller, index and data
    (0x0510, 2, 0xFF),      # QEMU's firmware configuration interface
)
DEBUG_PORT = 0x00E0         # kvmtool's IOPORT_DBG: 0xe0-0xef are "motherboard specific"
SEABIOS_DEBUG_PORT = 0x0402


class DummyPort:
    """Accepts any write; reads give `value` in every byte."""

    def __init__(self, value: int) -> None:
        self.value = value

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes([self.value]) * size, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class DebugPort(DummyPort):
    """kvmtool's debug_io(): with --debug-ioport (the bus is strict then)
    every access is told on stderr, in kvmtool's words."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(0xFF)
        self.verbose = verbose

    def _tell(self, what: str, size: int, data: str = "") -> None:
        if self.verbose:
            # vCPU threads are named kvm-vcpu-<id>, as kvmtool names them.
            vcpu = threading.current_thread().name.removeprefix("kvm-vcpu-")
            print(f"debug port {what} from VCPU{vcpu}: port={DEBUG_PORT:#x}, size={size}{data}",
                  file=sys.stderr)

    def read(self, offset: int, size: int) -> int:
        self._tell("read", size)
        return super().read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._tell("write", size, f", data: {value:#x}")


class SeabiosDebug(DummyPort):
    """Bytes written here are a firmware's debug output: to the console."""

    def __init__(self, out: Callable[[bytes], None]) -> None:
        super().__init__(0xFF)
        self.out = out

    def write(self, offset: int, size: int, value: int) -> None:
        self.out(bytes([value & 0xFF]))


def register(pio: Bus, console_out: Callable[[bytes], None]) -> None:
    for base, count, value in DUMMY_PORTS:
        pio.register(base, count, DummyPort(value))
    pio.register(DEBUG_PORT, 1, DebugPort(pio.strict))
    pio.register(SEABIOS_DEBUG_PORT, 1, SeabiosDebug(console_out))
