"""Raw disk images and block devices, moved to and from guest memory
without copies (preadv/pwritev on views of guest RAM).

`,ro` opens the image O_RDONLY and the device refuses the guest's
writes (disk/core.py's `,snapshot` is the writable throw-away view).
`,direct` opens it O_DIRECT.
"""

import ctypes
import errno
import fcntl
import mmap
import os
import stat

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from virtio.iov import advance, total

IOV_MAX = os.sysconf("SC_IOV_MAX")
SECTOR = 512

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


PUNCH = lib.FALLOC_FL_PUNCH_HOLE | lib.FALLOC_FL_KEEP_SIZE
ZERO = lib.FALLOC_FL_ZERO_RANGE | lib.FALLOC_FL_KEEP_SIZE
UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV)


def open_image(path: str, readonly: bool, direct: bool) -> int:
    """A descriptor for a regular file or block device.  Opened
    non-blocking first: opening a FIFO would wait for a writer forever."""
    flags = os.O_RDONLY if readonly else os.O_RDWR
    flags |= os.O_CLOEXEC | os.O_NONBLOCK | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise LkvmError(f"unable to open disk image {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise LkvmError(f"disk image {path} is not a regular file or block device")
    os.set_blocking(fd, True)
    return fd


def lock(fd: int, path: str, readonly: bool) -> None:
    """Take an open-file-description lock on the whole image, as QEMU
    does: a writer excludes everyone, readers (,ro) share.  Held until
    the fd is closed, and released by the kernel if lkvm dies."""
    flock = ffi.new("struct flock *", {"l_type": lib.F_RDLCK if readonly else lib.F_WRLCK,
                                       "l_whence": os.SEEK_SET})
    try:
        fcntl.fcntl(fd, lib.F_OFD_SETLK, bytes(ffi.buffer(flock)))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise LkvmError(f"disk image {path} is locked: another program has it open"
                            f"{' for writing' if readonly else ''}") from None
        # Other errors: a file system without locks (some network ones) still serves.


class RawDisk:
    def __init__(self, path: str, readonly: bool = False, direct: bool = False) -> None:
        self.path = path
        self.direct = direct
        self.readonly = readonly
        self.fd = open_image(path, readonly, direct)
        try:
            lock(self.fd, path, readonly)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            if self.size < SECTOR:
                raise LkvmError(f"disk image {path} is smaller than one sector")
        except BaseException:
            os.close(self.fd)
            raise
        self.can_discard = not readonly and self._probe(PUNCH)
        self.can_zero = not readonly and self._probe(ZERO)

    def _probe(self, mode: int) -> bool:
        """Whether the host file system does `mode`: try it on one byte
        past the end, which leaves the contents alone."""
        try:
            fallocate(self.fd, mode, self.size, 1)
        except OSError as e:
            return e.errno not in UNSUPPORTED
        return True

    def readv(self, views: list[memoryview], offset: int) -> None:
        self._io(os.preadv, views, offset)

    def writev(self, views: list[memoryview], offset: int) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only disk")
        self._io(os.pwritev, views, offset)

    def _io(self, op: object, views: list[memoryview], offset: int) -> None:
        views = [v for v in views if v]
        while views:
            batch = views[:IOV_MAX]
            try:
                n = op(self.fd, batch, offset)
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                return self._bounce(op, views, offset)
            if n == 0:
                raise OSError(errno.EIO, "short transfer")
            offset += n
            # Mostly all of it went: a short transfer is rare, and only
            # then are the views walked to find where to go on from.
            views = views[IOV_MAX:] if n == total(batch) else advance(views, n)

    def _bounce(self, op: object, views: list[memoryview], offset: int) -> None:
        """O_DIRECT wants aligned buffers; guest buffers need not be, so
        go through a page-aligned one."""
        size = total(views)
        with mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE) as buf:
            if op is os.pwritev:
                pos = 0
                for v in views:
                    buf[pos:pos + len(v)] = v
                    pos += len(v)
            bounce = memoryview(buf)[:size]
            self._io_plain(op, bounce, offset)
            if op is os.preadv:
                pos = 0
                for v in views:
                    v[:] = bounce[pos:pos + len(v)]
                    pos += len(v)
            bounce.release()

    def _io_plain(self, op: object, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = op(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "short transfer")
            done += n

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        fallocate(self.fd, PUNCH, offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        punch = self.can_discard and (unmap or not self.can_zero)
        fallocate(self.fd, PUNCH if punch else ZERO, offset, length)

    def close(self) -> None:
        os.close(self.fd)
