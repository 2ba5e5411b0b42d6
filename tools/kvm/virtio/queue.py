"""The split virtqueue (virtio 1.x §2.7) as the device sees it.

The driver owns the descriptor table and the available ring, the device
owns the used ring; all three live in guest RAM, which the guest can
change under us at any time.  Every index and address read from them is
checked, each descriptor is read once, and a chain that breaks the ring
rules raises QueueError: the device then stops and asks for a reset.

The driver runs on other CPUs meanwhile, so each crossing of the rings
has its barrier (virtio 1.x §2.7.13, §2.7.10), paired with the driver's:
an acquire after reading the available index, a release before
publishing the used index, and a full fence wherever the device writes
one word and then reads one the driver writes (the available event
index before looking at the ring again, the used index before asking
whether the driver wants an interrupt).

The ring's index, flags and event words are read and written as whole
16-bit words through a 16-bit view of the ring: two byte accesses could
see half an update the driver makes meanwhile (a used event 0x00ff
becoming 0x0100 read as 0x01ff), and decide against an interrupt or a
kick that was due, leaving the driver to wait for ever.  The words are
the host's order, little-endian on every host lkvm runs on.
"""

from dataclasses import dataclass

from include.uapi import ffi, lib
from kvm.barrier import acquire, mb, release
from kvm.cstruct import packer
from kvm.errors import GuestError

DESC = packer("struct vring_desc")
DESC_SIZE = ffi.sizeof("struct vring_desc")
USED_ELEM = packer("struct vring_used_elem")
USED_ELEM_SIZE = ffi.sizeof("struct vring_used_elem")
AVAIL_RING = ffi.offsetof("struct vring_avail", "ring")
AVAIL_IDX = ffi.offsetof("struct vring_avail", "idx")
USED_RING = ffi.offsetof("struct vring_used", "ring")
USED_IDX = ffi.offsetof("struct vring_used", "idx")
U16 = 2

MAX_QUEUE_SIZE = 32768  # the spec's limit for split queues

F_NEXT, F_WRITE, F_INDIRECT = lib.VRING_DESC_F_NEXT, lib.VRING_DESC_F_WRITE, \
    lib.VRING_DESC_F_INDIRECT


class QueueError(GuestError):
    """The driver broke the virtqueue rules; the device needs a reset."""


@dataclass(slots=True)
class Chain:
    """One request: the head's index and the buffers it names, the
    device-readable ones first, as guest memory views, and their sizes
    (counted once here, not again by each device)."""
    head: int
    readable: list[memoryview]
    writable: list[memoryview]
    readable_size: int = 0
    writable_size: int = 0


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring of a
    queue of `size` entries, event index words included."""
    return (DESC_SIZE * size, AVAIL_RING + U16 * size + U16,
            USED_RING + USED_ELEM_SIZE * size + U16)


class Virtqueue:
    def __init__(self, mem: object, max_size: int) -> None:
        self.mem = mem
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.enabled = False
        self.event_idx = False
        self.indirect = False
        self.vector = lib.VIRTIO_MSI_NO_VECTOR
        self.last_avail = 0
        self.used_idx = 0
        self._desc = self._avail = self._used = self._used16 = None

    def activate(self) -> None:
        """Check the driver's queue set-up and map the rings."""
        size = self.size
        if not 0 < size <= min(self.max_size, MAX_QUEUE_SIZE) or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two up to {self.max_size}")
        for addr, align in ((self.desc_addr, lib.VRING_DESC_ALIGN_SIZE),
                            (self.avail_addr, lib.VRING_AVAIL_ALIGN_SIZE),
                            (self.used_addr, lib.VRING_USED_ALIGN_SIZE)):
            if addr % align:
                raise QueueError(f"ring address {addr:#x} is not {align}-byte aligned")
        desc, avail, used = ring_sizes(size)
        try:
            self._desc = self.mem.view(self.desc_addr, desc)
            self._avail = self.mem.view(self.avail_addr, avail).cast("H")
            self._used = self.mem.view(self.used_addr, used)
        except GuestError as e:
            raise QueueError(f"queue rings outside RAM: {e}") from None
        self._used16 = self._used.cast("H")
        self.last_avail = self.used_idx = 0  # a fresh queue starts at 0, whatever RAM says
        self.enabled = True

    @staticmethod
    def _u16(words: memoryview, off: int) -> int:
        """The word at byte offset `off` of a ring's 16-bit view, in one load."""
        return words[off >> 1]

    @staticmethod
    def _put16(words: memoryview, off: int, value: int) -> None:
        words[off >> 1] = value

    def pop(self) -> Chain | None:
        """The next available chain, or None when the ring is empty."""
        avail = self._avail
        idx = self._u16(avail, AVAIL_IDX)
        if idx == self.last_avail and self.event_idx:
            # Tell the driver where to kick next, then look again: it may
            # have added a buffer before seeing the new event index.
            self._put16(self._used16, USED_RING + USED_ELEM_SIZE * self.size, self.last_avail)
            mb()
            idx = self._u16(avail, AVAIL_IDX)
        if idx == self.last_avail:
            return None
        if (idx - self.last_avail) & 0xFFFF > self.size:
            raise QueueError(f"available index {idx} ran {self.size}+ entries ahead")
        acquire()  # the ring entry and descriptors the driver wrote before idx
        head = self._u16(avail, AVAIL_RING + U16 * (self.last_avail % self.size))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return self._walk(head)

    def rewind(self, count: int) -> None:
        """Put the last `count` chains popped back on the ring, unused: a
        device that found it cannot finish with them yet (a received
        frame longer than the buffers posted so far) takes them again,
        read afresh, on a later pop."""
        self.last_avail = (self.last_avail - count) & 0xFFFF

    def _walk(self, head: int) -> Chain:
        # The loop runs once per descriptor: names it uses are local, and
        # the buffers are looked up in guest memory together at the end.
        table, entries, unpack = self._desc, self.size, DESC.unpack_from
        ranges: list[tuple[int, int]] = []
        readable = writable = readable_size = writable_size = 0
        index, budget, indirect = head, self.size, False
        while True:
            if index >= entries:
                raise QueueError(f"descriptor index {index} past a table of {entries}")
            budget -= 1
            if budget < 0:
                raise QueueError("descriptor chain is longer than the queue (a loop?)")
            addr, length, flags, nxt = unpack(table, DESC_SIZE * index)
            if flags & F_INDIRECT:
                if indirect or not self.indirect or flags & F_NEXT:
                    raise QueueError("indirect descriptor where none may be")
                if not length or length % DESC_SIZE:
                    raise QueueError(f"indirect table of {length} bytes")
                try:
                    table = self.mem.view(addr, length)
                except GuestError as e:
                    raise QueueError(str(e)) from None
                index, entries, indirect = 0, length // DESC_SIZE, True
                continue
            if flags & F_WRITE:
                writable += 1
                writable_size += length
            elif writable:
                raise QueueError("device-readable descriptor after a writable one")
            else:
                readable += 1
                readable_size += length
            ranges.append((addr, length))
            if not flags & F_NEXT:
                break
            index = nxt
        try:
            views = self.mem.views(ranges)
        except GuestError as e:
            raise QueueError(str(e)) from None
        return Chain(head, views[:readable], views[readable:], readable_size, writable_size)

    def push(self, head: int, written: int) -> None:
        """Give a chain back with the number of bytes the device wrote."""
        USED_ELEM.pack_into(self._used, USED_RING + USED_ELEM_SIZE * (self.used_idx % self.size),
                            head, written)
        release()  # the element is visible before the index that publishes it
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._put16(self._used16, USED_IDX, self.used_idx)

    def needs_interrupt(self, old_used: int) -> bool:
        """Whether the driver asked to hear of the entries pushed since the
        used index was `old_used` (virtio 1.x §2.7.10)."""
        new = self.used_idx
        if new == old_used:
            return False
        mb()  # the driver may have looked at the used index before we wrote it
        if self.event_idx:
            event = self._u16(self._avail, AVAIL_RING + U16 * self.size)
            return (new - event - 1) & 0xFFFF < (new - old_used) & 0xFFFF
        return not self._u16(self._avail, 0) & lib.VRING_AVAIL_F_NO_INTERRUPT
