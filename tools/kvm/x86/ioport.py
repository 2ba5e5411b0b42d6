"""Legacy PC ports nothing in lkvm models but guests touch anyway, claimed
as kvmtool claims them (its x86/ioport.c): writes vanish, reads float high.

Unclaimed, each access still works (the bus reads all ones and drops
writes) but takes the bus's slow miss path, and Linux writes some of these
on every I/O delay or probe.  The PIC and PIT ports kvmtool also lists are
served by KVM's in-kernel irqchip and never reach lkvm.
"""

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


class DummyPort:
    """Accepts any write; reads give `value` in every byte."""

    def __init__(self, value: int) -> None:
        self.value = value

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes([self.value]) * size, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def register(pio: Bus) -> None:
    for base, count, value in DUMMY_PORTS:
        pio.register(base, count, DummyPort(value))
