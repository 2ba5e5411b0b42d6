"""Port I/O and MMIO buses: devices claim address ranges, exits find them.

A device on a bus implements `read(offset, size) -> int` and
`write(offset, size, value)`, with `offset` relative to the start of the
range it registered.
"""

import bisect
from typing import Protocol

from kvm import msg


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class Bus:
    """Ranges sorted by start; lookups by bisection.  Accesses nobody
    claimed read as all ones (an empty bus floats high, which is what
    probing guests expect) and are dropped, logged only when asked."""

    def __init__(self, name: str, debug: bool = False) -> None:
        self.name = name
        self.debug = debug
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []

    def register(self, base: int, length: int, dev: BusDevice) -> None:
        i = bisect.bisect_left(self._starts, base)
        prev_end = self._ranges[i - 1][1] if i > 0 else 0
        if prev_end > base or (i < len(self._starts) and self._starts[i] < base + length):
            raise ValueError(f"{self.name} range {base:#x}+{length:#x} overlaps another device")
        self._starts.insert(i, base)
        self._ranges.insert(i, (base, base + length, dev))

    def unregister(self, base: int) -> None:
        i = self._starts.index(base)
        del self._starts[i], self._ranges[i]

    def find(self, addr: int) -> tuple[int, BusDevice] | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            base, end, dev = self._ranges[i]
            if addr < end:
                return base, dev
        return None

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            self._unhandled("in", addr, size)
            return (1 << (8 * size)) - 1
        return hit[1].read(addr - hit[0], size)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr)
        if hit is None:
            self._unhandled("out", addr, size)
            return
        hit[1].write(addr - hit[0], size, value)

    def _unhandled(self, direction: str, addr: int, size: int) -> None:
        if self.debug:
            msg.warning(f"unhandled {self.name} {direction} at {addr:#x}, size {size}")
