"""A shared tree with a sentinel beside it, for the 9p server tests.

    base/outside/secret     must never be read, changed or joined by others
    base/root/              the share: file, dir/, abs and rel symlinks out
"""

import logging
import os
import shutil
import stat

from virtio.p9 import Server
from virtio.p9.client import Client

SECRET = b"host secret\n"


class Share:
    def __init__(self, base, readonly: bool = False) -> None:
        self.base = str(base)
        self.root = os.path.join(self.base, "root")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "secret"), "wb") as f:
            f.write(SECRET)
        os.makedirs(self.root)
        self.populate()
        self.before = self.snapshot()
        self.server = Server(self.root, readonly=readonly)
        self.errors = _Recorder()
        logging.getLogger("virtio.p9").addHandler(self.errors)

    def populate(self) -> None:
        """(Re)make the share's own entries, whatever the guest did to them."""
        want = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "abs": stat.S_IFLNK,
                "rel": stat.S_IFLNK, "abs_secret": stat.S_IFLNK}
        for name, kind in want.items():
            p = os.path.join(self.root, name)
            try:
                if stat.S_IFMT(os.lstat(p).st_mode) == kind:
                    continue
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            except FileNotFoundError:
                pass
            self._make(name, p)

    def _make(self, name: str, p: str) -> None:
        targets = {"abs": self.outside, "rel": "../outside",
                   "abs_secret": os.path.join(self.outside, "secret")}
        if name == "dir":
            os.mkdir(p)
        elif name == "file":
            with open(p, "wb") as f:
                f.write(b"0123456789")
        else:
            os.symlink(targets[name], p)

    def inodes_outside(self) -> set[int]:
        return {os.lstat(p).st_ino for p in (self.base, self.outside,
                                              os.path.join(self.outside, "secret"))}

    def client(self, msize: int = 65536) -> Client:
        c = Client(self.server.handle)
        c.mount(msize)
        return c

    def snapshot(self) -> list:
        """Everything about base except the share: names, modes, owners, times, data."""
        out = [sorted(os.listdir(self.base))]
        for dirpath, dirs, files in os.walk(self.outside):
            for name in sorted(dirs + files):
                p = os.path.join(dirpath, name)
                # Read first: under relatime the first read moves atime.
                data = _read(p) if os.path.isfile(p) else None
                st = os.lstat(p)
                out.append((p, st.st_mode, st.st_uid, st.st_gid, st.st_size,
                            st.st_mtime_ns, st.st_atime_ns, st.st_nlink, data))
        st = os.lstat(self.outside)
        out.append((st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink))
        return out

    def check(self) -> None:
        """Nothing outside the share changed and the server hit no bug."""
        assert self.snapshot() == self.before
        assert not self.errors.records, self.errors.records[0].getMessage()

    def close(self) -> None:
        logging.getLogger("virtio.p9").removeHandler(self.errors)
        self.server.close()


def _read(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record) -> None:
        self.records.append(record)
