"""Port I/O and MMIO buses: devices claim address ranges, exits find them.

A device on a bus implements `read(offset, size) -> int` and
`write(offset, size, value)`, with `offset` relative to the start of the
range it registered.

vCPU threads look ranges up while another vCPU may be moving a BAR, so
lookups read an immutable snapshot, taken with one attribute load and
never changed; (re)registration builds a new one under a lock and swaps
it in with one store.  Lookups take no lock and never see a half-made
change.
"""

import bisect
import threading
from typing import NamedTuple, Protocol

from kvm import msg


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class Range(NamedTuple):
    base: int
    end: int
    dev: BusDevice


class Snapshot(NamedTuple):
    """Ranges sorted by base, and their bases for bisection."""
    starts: tuple[int, ...]
    ranges: tuple[Range, ...]


EMPTY = Snapshot((), ())


class Unclaimed(Exception):
    """An access no device claims, on a bus told to stop the vCPU there
    (--debug-ioport, as kvmtool's kvm__emulate_io() does)."""


def _with(ranges: list[Range], new: Range, name: str) -> list[Range]:
    """`ranges` with `new` in its place; ValueError if it overlaps one."""
    i = bisect.bisect_left(ranges, new.base, key=lambda r: r.base)
    if (i > 0 and ranges[i - 1].end > new.base) or (i < len(ranges) and
                                                    ranges[i].base < new.end):
        raise ValueError(f"{name} range {new.base:#x}+{new.end - new.base:#x} "
                         "overlaps another device")
    return ranges[:i] + [new] + ranges[i:]


class Bus:
    """Lookups by bisection of the current snapshot.  Accesses nobody
    claimed read as all ones (an empty bus floats high, which is what
    probing guests expect) and are dropped, logged when `debug` asks, or
    raise Unclaimed when `strict` does."""

    def __init__(self, name: str, debug: bool = False, strict: bool = False) -> None:
        self.name = name
        self.debug = debug
        self.strict = strict
        self._snapshot = EMPTY
        self._lock = threading.Lock()   # one writer at a time

    def register(self, base: int, length: int, dev: BusDevice) -> None:
        with self._lock:
            ranges = list(self._snapshot.ranges)
            self._publish(_with(ranges, Range(base, base + length, dev), self.name))

    def unregister(self, base: int) -> None:
        with self._lock:
            ranges = list(self._snapshot.ranges)
            ranges.pop(self._index(base))
            self._publish(ranges)

    def move(self, base: int, new_base: int) -> None:
        """Move the range at `base` to `new_base` in one step: a lookup
        finds it at one place or the other, never at neither.  If it
        would overlap another range, ValueError and it stays."""
        with self._lock:
            ranges = list(self._snapshot.ranges)
            old = ranges.pop(self._index(base))
            self._publish(_with(ranges, Range(new_base, new_base + old.end - old.base,
                                              old.dev), self.name))

    def _index(self, base: int) -> int:
        """Where the range starting at `base` is; ValueError if none does."""
        starts = self._snapshot.starts
        i = bisect.bisect_left(starts, base)
        if i == len(starts) or starts[i] != base:
            raise ValueError(f"no {self.name} range at {base:#x}")
        return i

    def _publish(self, ranges: list[Range]) -> None:
        self._snapshot = Snapshot(tuple(r.base for r in ranges), tuple(ranges))

    def find(self, addr: int) -> tuple[int, BusDevice] | None:
        starts, ranges = self._snapshot     # one load: a consistent pair
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < ranges[i].end:
            return ranges[i].base, ranges[i].dev
        return None

    # read() and write() are every exit's path: find() inlined, one
    # snapshot load and one range unpacked.
    def read(self, addr: int, size: int) -> int:
        starts, ranges = self._snapshot
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            base, end, dev = ranges[i]
            if addr < end:
                return dev.read(addr - base, size)
        self._unhandled("in", addr, size)
        return (1 << (8 * size)) - 1

    def write(self, addr: int, size: int, value: int) -> None:
        starts, ranges = self._snapshot
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            base, end, dev = ranges[i]
            if addr < end:
                dev.write(addr - base, size, value)
                return
        self._unhandled("out", addr, size)

    def _unhandled(self, direction: str, addr: int, size: int) -> None:
        if self.strict:
            raise Unclaimed(direction, addr, size)
        if self.debug:
            msg.warning(f"unhandled {self.name} {direction} at {addr:#x}, size {size}")
