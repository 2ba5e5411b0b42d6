"""The fid table of one 9P session."""

import errno
import os
from dataclasses import dataclass, field

from .wire import NOFID


@dataclass
class Fid:
    """What a guest fid names on the host.

    fd pins the object itself (an O_PATH descriptor, so holding it opens
    nothing and a later rename or symlink swap of its name cannot redirect
    it); every operation on the fid goes through fd or *at() calls relative
    to it.  path is the chain of names from the root, used only where the
    kernel has no fd-based call: '..' (resolved lexically, so it stops at
    the root) and remove/rename of the fid itself.
    """

    fd: int
    path: tuple[bytes, ...]
    uid: int                    # who attached: owner of files created here
    file: int = -1              # descriptor from lopen/lcreate
    dirents: list = field(default_factory=list)   # readdir snapshot

    def close(self) -> None:
        for fd in (self.fd, self.file):
            if fd >= 0:
                os.close(fd)
        self.fd = self.file = -1


class FidTable:
    def __init__(self) -> None:
        self._fids: dict[int, Fid] = {}

    def get(self, n: int) -> Fid:
        try:
            return self._fids[n]
        except KeyError:
            raise OSError(errno.EBADF, "unknown fid") from None

    def check_free(self, n: int) -> None:
        if n == NOFID or n in self._fids:
            raise OSError(errno.EBADF, "fid in use")

    def put(self, n: int, fid: Fid) -> None:
        """Bind n to fid, dropping what n named before (walk to itself)."""
        old = self._fids.get(n)
        self._fids[n] = fid
        if old is not None:
            old.close()

    def clunk(self, n: int) -> None:
        self.get(n).close()
        del self._fids[n]

    def clear(self) -> None:
        for fid in self._fids.values():
            fid.close()
        self._fids.clear()

    def renamed(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        """Follow a rename of old to new in the paths of every fid below it."""
        for fid in self._fids.values():
            if fid.path[:len(old)] == old:
                fid.path = new + fid.path[len(old):]
