"""The fid table of one 9P session, and the host fds it may hold.

A guest decides how many fids it keeps: Linux with cache=loose keeps one
per cached inode, so touching 20,000 files meant 20,000 host fds, and
then EMFILE for everything lkvm does.  So the table counts fids (at most
MAX_FIDS) and the fds they hold (at most its budget).  Over budget, the
least recently used fids let go of their fds before the next request
and reopen them when next used: by their path, walked from the root one
component at a time as a walk does, and checked to reach the same inode,
as kvmtool keeps paths rather than fds.  Fds are only ever closed between
requests, so a handler never sees one it holds go away.
"""

import errno
import os
import resource
from collections import OrderedDict

from . import fs
from .wire import NOFID

# Far more than Linux keeps for a busy cache=loose mount; each costs a
# few hundred bytes, fds or not.
MAX_FIDS = 1 << 17
# Fds one request may open before the next trim: a walk's new fid and
# reopens of the (at most two) fids it names, with room to spare.
REQUEST_FDS = 8
MIN_BUDGET = 4 * REQUEST_FDS
# The share of lkvm's fd limit one 9p session may hold; the rest is for
# disks, eventfds, vCPUs, sockets and the other shares.
BUDGET_SHARE = 8
# Open flags that only mean something the first time.
FIRST_OPEN_ONLY = os.O_TRUNC | os.O_CREAT | os.O_EXCL


def fd_budget() -> int:
    """Fds one session may hold, from the soft RLIMIT_NOFILE now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_BUDGET, soft // BUDGET_SHARE)


class Fid:
    """What a guest fid names on the host.

    fd pins the object itself (an O_PATH descriptor, so holding it opens
    nothing and a later rename or symlink swap of its name cannot redirect
    it); every operation on the fid goes through fd or *at() calls relative
    to it.  path is the chain of names from the root, used where the
    kernel has no fd-based call ('..', resolved lexically so it stops at
    the root, and remove/rename of the fid itself) and to reopen fd after
    the table took it back.  file is the descriptor lopen/lcreate opened,
    reopened with the same flags when it was taken back.
    """

    def __init__(self, fd: int, path: tuple[bytes, ...], uid: int) -> None:
        self._fd = fd
        self._file = -1
        self.path = path
        self.uid = uid                  # who attached: owner of files created here
        self.flags: int | None = None   # how file was opened; None: not open
        self.dirents: list = []         # readdir snapshot
        self.inode: tuple[int, int] | None = None   # (dev, ino) once fds were taken back
        self.table: FidTable | None = None

    @property
    def fd(self) -> int:
        if self._fd < 0:
            self._fd = self._reopen_path()
            self.table.charge(self, 1)
        return self._fd

    @property
    def opened(self) -> bool:
        return self.flags is not None

    @property
    def file(self) -> int:
        if self._file < 0 and self.opened:
            self._file = fs.reopen(self.fd, self.flags)
            self.table.charge(self, 1)
        return self._file

    def open(self, file: int, flags: int) -> None:
        """Hold file, opened with flags, as this fid's open file."""
        self._file, self.flags = file, flags & ~FIRST_OPEN_ONLY
        self.table.charge(self, 1)

    def repoint(self, fd: int, path: tuple[bytes, ...]) -> None:
        """Name another object: fd pins it, path leads to it."""
        if self._fd >= 0:
            os.close(self._fd)
        else:
            self.table.charge(self, 1)
        self._fd, self.path, self.inode = fd, path, None

    def _reopen_path(self) -> int:
        if self._file >= 0:
            # The open file names the object even if it lost its name.
            return os.open(fs.proc(self._file), os.O_PATH | os.O_CLOEXEC)
        fd = fs.resolve(self.table.root, self.path)
        st = os.stat(fd)
        if self.inode is not None and (st.st_dev, st.st_ino) != self.inode:
            os.close(fd)
            fs.fail(errno.ESTALE)       # the name now leads somewhere else
        return fd

    def release(self, remember: bool = True) -> int:
        """Close the fds held, remembering what they named unless the fid
        is going away; how many."""
        held = [fd for fd in (self._fd, self._file) if fd >= 0]
        if remember and held and self.inode is None:
            st = os.stat(held[0])
            self.inode = st.st_dev, st.st_ino
        for fd in held:
            os.close(fd)
        self._fd = self._file = -1
        return len(held)


class FidTable:
    def __init__(self, root: int, budget: int | None = None) -> None:
        self.root = root
        self.budget = max(MIN_BUDGET, budget if budget is not None else fd_budget())
        self.held = 0           # fds the fids hold
        self._fids: dict[int, Fid] = {}
        # Fids holding fds, least recently used first.
        self._holding: OrderedDict[Fid, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fids)

    def charge(self, fid: Fid, fds: int) -> None:
        self.held += fds
        self._holding[fid] = None
        self._holding.move_to_end(fid)

    def trim(self) -> None:
        """Before a request: take fds back from the least recently used
        fids until the request has room within the budget."""
        while self.held > self.budget - REQUEST_FDS and self._holding:
            fid, _ = self._holding.popitem(last=False)
            self.held -= fid.release()

    def get(self, n: int) -> Fid:
        try:
            fid = self._fids[n]
        except KeyError:
            raise OSError(errno.EBADF, "unknown fid") from None
        if fid in self._holding:
            self._holding.move_to_end(fid)
        return fid

    def check_free(self, n: int) -> None:
        if n == NOFID or n in self._fids:
            raise OSError(errno.EBADF, "fid in use")
        if len(self._fids) >= MAX_FIDS:
            raise OSError(errno.EMFILE, "too many fids")

    def put(self, n: int, fid: Fid) -> None:
        """Bind n to fid, dropping what n named before (walk to itself)."""
        old = self._fids.get(n)
        self._fids[n] = fid
        fid.table = self
        self.charge(fid, 1)
        if old is not None:
            self._drop(old)

    def _drop(self, fid: Fid) -> None:
        self._holding.pop(fid, None)
        self.held -= fid.release(remember=False)

    def clunk(self, n: int) -> None:
        self._drop(self.get(n))
        del self._fids[n]

    def clear(self) -> None:
        for fid in self._fids.values():
            self._drop(fid)
        self._fids.clear()

    def renamed(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        """Follow a rename of old to new in the paths of every fid below it."""
        for fid in self._fids.values():
            if fid.path[:len(old)] == old:
                fid.path = new + fid.path[len(old):]
