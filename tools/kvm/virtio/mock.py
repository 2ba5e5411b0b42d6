"""A guest's virtio driver in miniature, for tests and benchmarks.

It lays out split queues in a guest memory of its own (a GuestMemory
with a hole in it, no VM needed), builds descriptor chains the way Linux
does — direct or through an indirect table — and reads the used ring
back.  It also writes raw descriptors, so tests can hand a device the
chains a hostile guest would.
"""

from collections import Counter

from include.uapi import lib
from kvm.memory import GuestMemory
from virtio.device import S_FEATURES_OK, VirtioDevice
from virtio.queue import (
    AVAIL_IDX,
    AVAIL_RING,
    DESC,
    DESC_SIZE,
    USED_ELEM,
    USED_ELEM_SIZE,
    USED_IDX,
    USED_RING,
    ring_sizes,
)

F_NEXT, F_WRITE, F_INDIRECT = lib.VRING_DESC_F_NEXT, lib.VRING_DESC_F_WRITE, \
    lib.VRING_DESC_F_INDIRECT

# RAM below and above a hole, so addresses in the hole are "outside RAM".
LOW_RAM = 16 << 20
HOLE = (LOW_RAM, 32 << 20)
HIGH_RAM = 16 << 20


def mock_memory() -> GuestMemory:
    return GuestMemory([(0, LOW_RAM), (HOLE[1], HIGH_RAM)])


class MockTransport:
    """Counts the interrupts a device raises."""

    def __init__(self) -> None:
        self.queue_irqs: Counter = Counter()
        self.config_irqs = 0

    def signal_queue(self, index: int) -> None:
        self.queue_irqs[index] += 1

    def signal_config(self) -> None:
        self.config_irqs += 1


class DriverQueue:
    def __init__(self, driver: "Driver", index: int, size: int) -> None:
        self.driver, self.index, self.size = driver, index, size
        self.mem = driver.mem
        desc, avail, used = ring_sizes(size)
        self.desc = driver.alloc(desc, 16)
        self.avail = driver.alloc(avail, 2)
        self.used = driver.alloc(used, 4)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.inflight: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}

    # Raw access, for hostile chains.
    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int,
                   table: int | None = None) -> None:
        DESC.pack_into(self.mem.view(table if table is not None else self.desc,
                                     DESC_SIZE * (i + 1)), DESC_SIZE * i,
                       addr & (2**64 - 1), length & 0xFFFFFFFF, flags & 0xFFFF, nxt & 0xFFFF)

    def publish(self, head: int) -> None:
        self.mem.write(self.avail + AVAIL_RING + 2 * (self.avail_idx % self.size),
                       (head & 0xFFFF).to_bytes(2, "little"))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write(self.avail + AVAIL_IDX, self.avail_idx.to_bytes(2, "little"))

    def set_used_event(self, value: int) -> None:
        self.mem.write(self.avail + AVAIL_RING + 2 * self.size, value.to_bytes(2, "little"))

    # What a driver does.
    def add(self, out: list[bytes], in_lens: list[int], indirect: bool = False) -> int:
        """Queue one request: `out` buffers the device reads, then buffers
        of `in_lens` bytes it writes.  Returns the head index."""
        bufs = [(self.driver.alloc_data(d), len(d), 0) for d in out] + \
               [(self.driver.alloc(n, 8), n, F_WRITE) for n in in_lens]
        ins = [(a, n) for a, n, f in bufs if f]
        if indirect:
            table = self.driver.alloc(DESC_SIZE * len(bufs), 16)
            for i, (addr, n, f) in enumerate(bufs):
                last = i == len(bufs) - 1
                self.write_desc(i, addr, n, f | (0 if last else F_NEXT), i + 1, table)
            head = self.free.pop()
            self.write_desc(head, table, DESC_SIZE * len(bufs), F_INDIRECT, 0)
            used = [head]
        else:
            used = [self.free.pop() for _ in bufs]
            for i, (addr, n, f) in enumerate(bufs):
                last = i == len(bufs) - 1
                self.write_desc(used[i], addr, n, f | (0 if last else F_NEXT),
                                0 if last else used[i + 1])
            head = used[0]
        self.inflight[head] = (used, ins)
        self.publish(head)
        return head

    def kick(self) -> None:
        self.driver.device.notify(self.index)

    def used_idx(self) -> int:
        return int.from_bytes(self.mem.read(self.used + USED_IDX, 2), "little")

    def collect(self) -> list[tuple[int, int, bytes]]:
        """Chains the device gave back: (head, length written, bytes of the
        device-writable buffers)."""
        done = []
        while self.last_used != self.used_idx():
            off = self.used + USED_RING + USED_ELEM_SIZE * (self.last_used % self.size)
            head, written = USED_ELEM.unpack(self.mem.read(off, USED_ELEM_SIZE))
            self.last_used = (self.last_used + 1) & 0xFFFF
            descs, ins = self.inflight.pop(head, ([], []))
            self.free += descs
            done.append((head, written, b"".join(self.mem.read(a, n) for a, n in ins)))
        return done


class Driver:
    def __init__(self, device: VirtioDevice, mem: GuestMemory | None = None,
                 base: int = 0x100000) -> None:
        self.device = device
        self.mem = mem if mem is not None else device.mem
        self.transport = MockTransport()
        device.transport = self.transport
        self.base = self.next = base
        self.queues: list[DriverQueue] = []

    def alloc(self, size: int, align: int = 8) -> int:
        """Bump allocation in low RAM, wrapping round to just after the
        rings when it runs out."""
        if self.next + size > LOW_RAM:
            self.next = self.base
        addr = -(-self.next // align) * align
        self.next = addr + size
        return addr

    def alloc_data(self, data: bytes) -> int:
        addr = self.alloc(len(data))
        self.mem.write(addr, data)
        return addr

    def negotiate(self, features: int | None = None) -> bool:
        dev = self.device
        dev.reset()
        dev.set_status(lib.VIRTIO_CONFIG_S_ACKNOWLEDGE | lib.VIRTIO_CONFIG_S_DRIVER)
        dev.set_driver_features(dev.offered() if features is None else features)
        dev.set_status(dev.status | S_FEATURES_OK)
        return bool(dev.status & S_FEATURES_OK)

    def setup_queue(self, index: int, size: int | None = None) -> DriverQueue:
        q = self.device.queues[index]
        dq = DriverQueue(self, index, size or q.max_size)
        self.base = self.next  # buffers wrap round to here, never over the rings
        q.size, q.desc_addr, q.avail_addr, q.used_addr = dq.size, dq.desc, dq.avail, dq.used
        self.device.enable_queue(index)
        self.queues.append(dq)
        return dq

    def start(self, features: int | None = None) -> list[DriverQueue]:
        """Negotiate, set up every queue and go: what a probe does."""
        assert self.negotiate(features)
        qs = [self.setup_queue(i) for i in range(len(self.device.queues))]
        self.device.set_status(self.device.status | lib.VIRTIO_CONFIG_S_DRIVER_OK)
        return qs
