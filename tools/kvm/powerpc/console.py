"""The sPAPR hypervisor console (hvc0, the /vdevice vty node): the guest
writes and polls it with H_PUT_TERM_CHAR and H_GET_TERM_CHAR, so its
input waits here until asked for, in a bounded buffer."""

import threading
from collections.abc import Callable

# The vty's unit address (its reg), which the guest names it by: QEMU's.
VTY_REG = 0x30000000
# Input the guest has not read yet, at most: a paste into a guest that never
# polls must not grow lkvm without end.  Beyond it input is dropped, as a
# UART's FIFO overruns.
INPUT_LIMIT = 4096
# hvc takes ^O and the next key as a sysrq.
SYSRQ_PREFIX = b"\x0f"


class HvConsole:
    def __init__(self, output: Callable[[bytes], None]) -> None:
        self.output = output
        self._input = bytearray()
        self._lock = threading.Lock()

    # The terminal's side (kvm.arch.SerialConsole).
    def receive(self, data: bytes) -> None:
        with self._lock:
            self._input += data[:INPUT_LIMIT - len(self._input)]

    def sysrq(self, key: bytes) -> None:
        self.receive(SYSRQ_PREFIX + key)

    # The guest's side.
    def write(self, termno: int, data: bytes) -> bool:
        if termno != VTY_REG:
            return False
        if data:
            self.output(data)
        return True

    def read(self, termno: int, limit: int) -> bytes | None:
        if termno != VTY_REG:
            return None
        with self._lock:
            data = bytes(self._input[:limit])
            del self._input[:limit]
        return data
