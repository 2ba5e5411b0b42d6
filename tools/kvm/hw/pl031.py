"""The ARM PrimeCell PL031 real-time clock, as much as Linux's rtc-pl031
uses: a seconds counter that runs with the host's clock from whatever the
guest loads into it.  The alarm is kept but never fires (no interrupt is
raised), as Linux only needs it for wakeups a VM does not have.

Register offsets are the chip's (ARM DDI 0224), not kernel ABI."""

import threading
import time
from collections.abc import Callable

DR, MR, LR, CR, IMSC, RIS, MIS, ICR = range(0, 0x20, 4)
CR_START = 1
# AMBA identification: the bus driver reads one byte from each word and
# matches PeriphID 0x00041031 (a PL031) and the PrimeCell ID 0xB105F00D.
ID_BYTES = {0xFE0: 0x31, 0xFE4: 0x10, 0xFE8: 0x04, 0xFEC: 0x00,
            0xFF0: 0x0D, 0xFF4: 0xF0, 0xFF8: 0x05, 0xFFC: 0xB1}
U32 = 0xFFFFFFFF


class Pl031:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.lock = threading.Lock()
        self.offset = 0     # what the guest loaded, less the host's time then
        self.match = 0
        self.mask = 0

    def _counter(self) -> int:
        return (int(self.now()) + self.offset) & U32

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            regs = {DR: self._counter(), MR: self.match, LR: self._counter(), CR: CR_START,
                    IMSC: self.mask, RIS: 0, MIS: 0}
            return regs.get(offset, ID_BYTES.get(offset, 0))

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            if offset == LR:
                self.offset = (value & U32) - int(self.now())
            elif offset == MR:
                self.match = value & U32
            elif offset == IMSC:
                self.mask = value & 1
