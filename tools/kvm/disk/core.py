"""What every disk image is to a device, and opening one: the format is
found by its magic, as kvmtool's disk/core.c probes, so a qcow2 image is
never taken for a raw one."""

import os
from typing import Protocol

from disk.raw import RawDisk, open_image
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


def _raw(path: str, readonly: bool, direct: bool, chain: tuple[str, ...]) -> Disk:
    return RawDisk(path, readonly=readonly, direct=direct)


def _qcow2(path: str, readonly: bool, direct: bool, chain: tuple[str, ...]) -> Disk:
    from disk.qcow2 import Qcow2  # it opens its backing files through us
    if direct:
        raise LkvmError(f"disk image {path}: ,direct is for raw images, not qcow2")
    return Qcow2(path, readonly, chain)


FORMATS = {b"QFI\xfb": _qcow2}


def probe(path: str) -> bytes:
    """The image's first four bytes, read through a descriptor of its own
    (the image's may be O_DIRECT, which wants aligned buffers)."""
    fd = open_image(path, readonly=True, direct=False)
    try:
        return os.pread(fd, 4, 0)
    finally:
        os.close(fd)


def open_format(path: str, readonly: bool, direct: bool, chain: tuple[str, ...] = ()) -> Disk:
    """The image in the format its magic says; `chain`, the images whose
    backing file it is."""
    return FORMATS.get(probe(path), _raw)(path, readonly, direct, chain)


def open_disk(path: str, readonly: bool = False, direct: bool = False,
              snapshot: bool = False) -> Disk:
    if readonly and snapshot:
        raise LkvmError(f"disk image {path}: ro and snapshot exclude each other")
    if snapshot:
        return Snapshot(open_format(path, True, direct))
    return open_format(path, readonly, direct)
