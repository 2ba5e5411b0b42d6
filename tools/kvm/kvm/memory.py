"""Guest physical memory: host mappings and bounds-checked access.

Every address a guest hands us goes through `view()`, which refuses any
range that is not wholly inside one RAM region; nothing else in lkvm turns
a guest address into host memory.
"""

import bisect
import mmap
import os
from dataclasses import dataclass

from include.uapi import ffi, lib
from kvm.errors import GuestError, LkvmError


@dataclass
class Region:
    gpa: int
    size: int
    map: mmap.mmap
    host: int  # host virtual address, for KVM's memory slots

    @property
    def end(self) -> int:
        return self.gpa + self.size


def check_hugetlbfs(path: str) -> None:
    """A directory on some other file system would be accepted by
    mkstemp and mmap alike, and quietly give the guest ordinary pages.
    Checked with the other options, before KVM is opened."""
    fs_type = lib.lkvm_fs_type(os.fsencode(path))
    if fs_type < 0:
        raise LkvmError(f"cannot use hugetlbfs at {path}: {os.strerror(ffi.errno)}")
    if fs_type != lib.HUGETLBFS_MAGIC:
        raise LkvmError(f"cannot use hugetlbfs at {path}: not a hugetlbfs mount")


class GuestMemory:
    """RAM as one or more regions of guest physical address space."""

    def __init__(self, layout: list[tuple[int, int]], hugetlbfs: str | None = None) -> None:
        self.regions: list[Region] = []
        for gpa, size in sorted(layout):
            mm = self._map(size, hugetlbfs)
            host = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
            self.regions.append(Region(gpa, size, mm, host))
        self._starts = [r.gpa for r in self.regions]
        # view() runs for every descriptor a device reads: its bounds and
        # views made once, not per call.
        self._ends = [r.end for r in self.regions]
        self._maps = [memoryview(r.map) for r in self.regions]
        self.size = sum(r.size for r in self.regions)

    @staticmethod
    def _map(size: int, hugetlbfs: str | None) -> mmap.mmap:
        if hugetlbfs is None:
            # MAP_NORESERVE from the uapi headers: Python's mmap module has
            # it only from 3.12, and without it a guest larger than the
            # host's free RAM and swap is refused though it may never touch
            # most of its RAM (kvmtool warns about it, and runs it).
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | lib.MAP_NORESERVE
            try:
                return mmap.mmap(-1, size, flags=flags)
            except OSError as e:
                raise LkvmError(f"cannot map {size >> 20} MiB of guest RAM: "
                                f"{e.strerror}") from None
        import tempfile
        try:
            fd, path = tempfile.mkstemp(dir=hugetlbfs, prefix="lkvm-")
        except OSError as e:
            raise LkvmError(f"cannot use hugetlbfs at {hugetlbfs}: {e.strerror}") from None
        try:
            os.unlink(path)
            os.ftruncate(fd, size)
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as e:
            raise LkvmError(f"cannot map {size >> 20} MiB from {hugetlbfs}: {e.strerror}") from None
        finally:
            os.close(fd)

    def layout(self) -> list[tuple[int, int]]:
        """(guest physical address, size) of each region, lowest first."""
        return [(r.gpa, r.size) for r in self.regions]

    def _index(self, gpa: int, length: int) -> int:
        """The index of the region that holds all of gpa+length: the one
        check every guest address goes through."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i < 0 or length < 0 or gpa + length > self._ends[i]:
            raise GuestError(f"guest range {gpa:#x}+{length:#x} is outside RAM")
        return i

    def region(self, gpa: int, length: int) -> Region:
        return self.regions[self._index(gpa, length)]

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest memory, without copying."""
        i = self._index(gpa, length)
        off = gpa - self._starts[i]
        return self._maps[i][off:off + length]

    def views(self, ranges: list[tuple[int, int]]) -> list[memoryview]:
        """view() of each (gpa, length), checked as view() checks one: a
        descriptor chain's buffers at once, which mostly lie in one
        region, looked up again only when a range is not in the last."""
        out: list[memoryview] = []
        lo, hi, ram = 0, -1, None
        for gpa, length in ranges:
            if gpa < lo or gpa + length > hi or length < 0:
                i = self._index(gpa, length)
                lo, hi, ram = self._starts[i], self._ends[i], self._maps[i]
            out.append(ram[gpa - lo:gpa - lo + length])
        return out

    def contains(self, gpa: int, length: int) -> bool:
        try:
            self.region(gpa, length)
        except GuestError:
            return False
        return True

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def discard(self, gpa: int, length: int) -> None:
        """Hand a range of whole host pages back to the host (a balloon
        inflating): it reads as zeros and takes host memory again only
        when the guest touches it.  Refuses anything outside RAM; OSError
        where the backing cannot drop pages (hugetlbfs at 4 KiB grain)."""
        r = self.region(gpa, length)
        off = gpa - r.gpa
        if off % mmap.PAGESIZE or length % mmap.PAGESIZE:
            raise GuestError(f"guest range {gpa:#x}+{length:#x} is not whole host pages")
        if length:
            r.map.madvise(mmap.MADV_DONTNEED, off, length)

    def struct(self, ctype: str, gpa: int) -> object:
        """A cffi pointer of type `ctype *` onto guest memory at `gpa`."""
        return ffi.from_buffer(ctype + " *", self.view(gpa, ffi.sizeof(ctype)))

    def close(self) -> None:
        for m in self._maps:
            m.release()         # or the maps refuse to close
        for r in self.regions:
            r.map.close()
