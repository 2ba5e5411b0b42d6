"""What every disk image is to a device, and opening one."""

from typing import Protocol

from disk.raw import RawDisk
from disk.snapshot import Snapshot
from kvm.errors import LkvmError


class Disk(Protocol):
    path: str
    size: int               # bytes the guest sees
    readonly: bool          # writes fail; the device offers VIRTIO_BLK_F_RO
    can_discard: bool
    can_zero: bool

    def readv(self, views: list[memoryview], offset: int) -> None: ...
    def writev(self, views: list[memoryview], offset: int) -> None: ...
    def flush(self) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None: ...
    def close(self) -> None: ...


def open_disk(path: str, readonly: bool = False, direct: bool = False,
              snapshot: bool = False) -> Disk:
    if readonly and snapshot:
        raise LkvmError(f"disk image {path}: ro and snapshot exclude each other")
    if snapshot:
        return Snapshot(RawDisk(path, readonly=True, direct=direct))
    return RawDisk(path, readonly=readonly, direct=direct)
