"""virtio-balloon (virtio 1.x §5.5): the host asks for guest memory back.

`lkvm balloon` moves the target, num_pages in config space, and raises
a config-change interrupt.  The driver inflates towards it by handing
page frame numbers over on the inflate queue, whose memory the host then
drops, and deflates by naming pages it takes back on the deflate queue;
those simply fault in again when the guest touches them.  The driver
reports how far it got in `actual`.

With VIRTIO_BALLOON_F_STATS_VQ the driver posts one buffer of tag/value
statistics and the device keeps it.  To ask for fresh figures the device
gives the buffer back; the driver refills and re-posts it.  `lkvm stat`
waits for that, a bounded time, and gets the figures as they came.
"""

import errno
import struct
import threading
from collections.abc import Iterator

from include.uapi import ffi, lib
from ipc.protocol import BALLOON, S32, STAT, Handler, IpcError
from kvm import msg
from kvm.cstruct import CODES, to_bytes
from kvm.errors import GuestError
from virtio.device import VirtioDevice
from virtio.iov import prefix
from virtio.queue import Chain, Virtqueue

INFLATE, DEFLATE, STATS = range(3)
PAGE_SHIFT = lib.VIRTIO_BALLOON_PFN_SHIFT  # balloon pages are 4 KiB whatever the guest's are
PAGE = 1 << PAGE_SHIFT
PFN = struct.Struct("<" + CODES[ffi.sizeof("__virtio32")])
# Linux sends up to 256 PFNs a request; a bigger one is read this far and
# no further, so a guest cannot make lkvm copy its RAM many times over.
MAX_PFNS = 1 << 16
MIB_SHIFT = 20
STAT_SIZE = ffi.sizeof("struct virtio_balloon_stat")
# A driver sends one entry per tag it knows; newer kernels know more tags
# than our headers, so allow room, but never copy a guest-sized buffer.
MAX_STATS = 256
STATS_TIMEOUT = 1.0  # seconds `lkvm stat` waits for the driver's answer

ACTUAL = slice(ffi.offsetof("struct virtio_balloon_config", "actual"),
               ffi.offsetof("struct virtio_balloon_config", "actual") +
               ffi.sizeof("__le32"))


class Balloon(VirtioDevice):
    device_id = lib.VIRTIO_ID_BALLOON
    name = "balloon"
    num_queues = 3
    # No DEFLATE_ON_OOM: without it Linux takes inflated pages off its
    # MemTotal, which is what a user asking for memory back expects to see.
    features = 1 << lib.VIRTIO_BALLOON_F_STATS_VQ

    def __init__(self, mem: object) -> None:
        super().__init__(mem)
        self.max_pages = mem.size >> PAGE_SHIFT
        self.num_pages = 0
        self.config = bytearray(to_bytes("struct virtio_balloon_config"))
        self.stats_posted = threading.Condition(self.lock)
        self.stats_head: int | None = None  # the driver's stats buffer, while we keep it
        self.stats = b""
        self.stats_seq = 0
        self.discard_warned = False
        self.by_queue = {INFLATE: self._inflate, DEFLATE: self._deflate, STATS: self._stats}

    def process(self, index: int, queue: Virtqueue) -> None:
        self.by_queue[index](queue)

    def _inflate(self, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            self._discard(self._pfns(chain))
            queue.push(chain.head, 0)

    @staticmethod
    def _pfns(chain: Chain) -> Iterator[int]:
        """The chain's page frame numbers, copied out first: the guest may
        rewrite its buffer while we work."""
        raw = prefix(chain.readable, MAX_PFNS * PFN.size)
        return (pfn for (pfn,) in PFN.iter_unpack(raw[:len(raw) - len(raw) % PFN.size]))

    def _discard(self, pfns: Iterator[int]) -> None:
        """Drop the host memory behind the pages, one madvise per run of
        consecutive pages.  A page outside RAM is skipped: the guest gives
        away nothing it has, and nothing of the host's is touched."""
        start, length = 0, 0
        for pfn in pfns:
            gpa = pfn << PAGE_SHIFT
            if length and gpa == start + length and self.mem.contains(start, length + PAGE):
                length += PAGE
                continue
            self._discard_run(start, length)
            start, length = gpa, PAGE if self.mem.contains(gpa, PAGE) else 0
        self._discard_run(start, length)

    def _discard_run(self, gpa: int, length: int) -> None:
        if not length:
            return
        try:
            self.mem.discard(gpa, length)
        except (GuestError, OSError) as e:
            # The memory stays with lkvm (hugetlbfs pages, host pages larger
            # than 4 KiB); the guest's balloon works all the same.
            if not self.discard_warned:
                msg.warning(f"virtio-balloon: cannot release guest memory: {e}")
                self.discard_warned = True

    def _deflate(self, queue: Virtqueue) -> None:
        """Pages the guest takes back fault in on their next touch; there
        is nothing to undo."""
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, 0)

    def _stats(self, queue: Virtqueue) -> None:
        """Keep the newest stats buffer; the driver has only one out, so
        an older one a confused driver left with us goes back."""
        while (chain := queue.pop()) is not None:
            if self.stats_head is not None:
                queue.push(self.stats_head, 0)
            self.stats_head = chain.head
            raw = prefix(chain.readable, MAX_STATS * STAT_SIZE)
            self.stats = raw[:len(raw) - len(raw) % STAT_SIZE]
            self.stats_seq += 1
            self.stats_posted.notify_all()

    def on_reset(self) -> None:
        self.stats_head = None
        self.stats = b""
        self._update_config(actual=0)

    # Config space: the target is ours, `actual` the driver's.
    def _update_config(self, **fields: int) -> None:
        current = ffi.from_buffer("struct virtio_balloon_config *", self.config)
        values = {"num_pages": current.num_pages, "actual": current.actual, **fields}
        self.config[:] = to_bytes("struct virtio_balloon_config", **values)

    def write_config(self, offset: int, size: int, value: int) -> None:
        if ACTUAL.start <= offset and offset + size <= ACTUAL.stop:
            with self.lock:
                self.config[offset:offset + size] = value.to_bytes(size, "little")

    # IPC, for `lkvm balloon` and `lkvm stat`.
    def ipc_handlers(self, guest: str) -> dict[int, tuple[Handler, int]]:
        """The IPC server's handlers for BALLOON and STAT; `guest` is the
        name the messages give."""
        return {BALLOON: (self._ipc_balloon, S32.size),
                STAT: (lambda payload: self._ipc_stat(guest), 0)}

    def _ipc_balloon(self, payload: bytes) -> bytes:
        """Move the target by a signed number of MiB, within [0, RAM]."""
        (mib,) = S32.unpack(payload)
        with self.lock:
            target = self.num_pages + (mib << MIB_SHIFT >> PAGE_SHIFT)
            self.num_pages = max(0, min(target, self.max_pages))
            self._update_config(num_pages=self.num_pages)
            # A driver reads the target when it starts; before that, an
            # interrupt would reach nobody.
            if self.status & lib.VIRTIO_CONFIG_S_DRIVER_OK and not self.broken:
                self.transport.signal_config()
        return b""

    def _ipc_stat(self, guest: str) -> bytes:
        """Give the stats buffer back to the driver and wait for it to come
        back refilled; the reply is its array of struct virtio_balloon_stat."""
        with self.stats_posted:
            seq = self.stats_seq
            if self.stats_head is not None and not self.broken:
                queue = self.queues[STATS]
                old = queue.used_idx
                queue.push(self.stats_head, 0)
                self.stats_head = None
                if queue.needs_interrupt(old):
                    self.transport.signal_queue(STATS)
            if not self.stats_posted.wait_for(lambda: self.stats_seq != seq, STATS_TIMEOUT):
                raise IpcError(errno.ETIMEDOUT, f"guest '{guest}' sent no memory statistics "
                               f"within {STATS_TIMEOUT:g} s: is its balloon driver loaded?")
            return self.stats
