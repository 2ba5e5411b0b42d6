"""`,snapshot`: the guest writes, the image never changes.

The image is opened read-only; what the guest writes goes to an unlinked,
sparse temporary file as large as the disk, so it costs host disk space
only where written and is gone with lkvm (even after kill -9).  What we
keep in memory is one bit per GRAIN of the disk: which grains the
overlay holds.  A write that covers part of a grain not yet there first
copies that grain from the image.  QEMU's `snapshot=on` is the same idea.
"""

import errno
import os
import tempfile
from collections.abc import Iterator

from disk.raw import IOV_MAX
from kvm.errors import LkvmError
from virtio.iov import advance, split, total

GRAIN = 64 << 10


class Snapshot:
    can_discard = can_zero = False
    readonly = False

    def __init__(self, base: object) -> None:
        self.base = base
        self.path = base.path
        self.size = base.size
        try:
            self.overlay = tempfile.TemporaryFile(prefix="lkvm-snapshot-")
            os.ftruncate(self.overlay.fileno(), self.size)
        except OSError as e:
            base.close()
            raise LkvmError(f"disk image {self.path}: no room for its snapshot in "
                            f"{tempfile.gettempdir()}: {e.strerror}") from None
        self.held = bytearray(-(-self.size // GRAIN) // 8 + 1)

    def _has(self, grain: int) -> bool:
        return bool(self.held[grain >> 3] >> (grain & 7) & 1)

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, in the overlay) for the grain-aligned runs of
        [offset, offset + length) that come from one place."""
        end = offset + length
        while offset < end:
            held = self._has(offset // GRAIN)
            stop = offset
            while stop < end and self._has(stop // GRAIN) == held:
                stop = min(end, (stop // GRAIN + 1) * GRAIN)
            yield offset, stop - offset, held
            offset = stop

    def readv(self, views: list[memoryview], offset: int) -> None:
        for start, n, held in self._runs(offset, total(views)):
            part, views = split(views, n)
            if held:
                self._overlay_io(os.preadv, part, start)
            else:
                self.base.readv(part, start)

    def writev(self, views: list[memoryview], offset: int) -> None:
        end = offset + total(views)
        if offset % GRAIN:
            self._copy_up(offset // GRAIN)
        if end % GRAIN and end < self.size:
            self._copy_up(end // GRAIN)
        self._overlay_io(os.pwritev, views, offset)
        for grain in range(offset // GRAIN, (end - 1) // GRAIN + 1):
            self.held[grain >> 3] |= 1 << (grain & 7)

    def _copy_up(self, grain: int) -> None:
        """Bring a grain the guest is about to write part of into the
        overlay, so the rest of it keeps the image's contents."""
        if self._has(grain):
            return
        start = grain * GRAIN
        buf = bytearray(min(GRAIN, self.size - start))
        self.base.readv([memoryview(buf)], start)
        os.pwrite(self.overlay.fileno(), buf, start)

    def _overlay_io(self, op: object, views: list[memoryview], offset: int) -> None:
        views = [v for v in views if len(v)]
        while views:
            n = op(self.overlay.fileno(), views[:IOV_MAX], offset)
            if n == 0:
                raise OSError(errno.EIO, "short transfer on the snapshot overlay")
            offset += n
            views = advance(views, n)

    def flush(self) -> None:
        pass  # nothing of it outlives lkvm

    def discard(self, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not offered on a snapshot")

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        raise OSError(errno.EOPNOTSUPP, "not offered on a snapshot")

    def close(self) -> None:
        self.overlay.close()
        self.base.close()
