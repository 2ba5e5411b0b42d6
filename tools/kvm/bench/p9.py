#!/usr/bin/env python3
"""The virtio-9p device, driven by the mock driver as Linux 6.1 drives it.

    p9.py [-m MIB] [-n OPS] [-r ROUNDS] [--msize BYTES] [--profile] [DIR]

Prints, each the best of ROUNDS:
- cold sequential read MB/s of a MIB-MiB file (the host's page cache
  dropped for it first) in Treads of msize - 24 bytes, each answered
  into an 11-byte header buffer and then page buffers, as Linux's
  zero-copy path lays them out (msize 131072 is Linux 6.1's default);
- metadata requests/s of an `ls -lR` of 10 directories of 44 files and
  4 subdirectories: per directory Twalk, Tlopen, Treaddir until empty,
  Tclunk; per entry Twalk, Tgetattr, Tclunk;
- create+stat+unlink rounds/s (Twalk clone, Tlcreate, Tgetattr, Tclunk,
  Tunlinkat).
Time is counted inside the device only (the kick), not in the mock
driver that builds the chains.  DIR (default: a temporary dir on
/var/tmp) should not be a tmpfs, whose pages cannot be dropped.
"""

import argparse
import cProfile
import importlib
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from virtio.mock import Driver, mock_memory
from virtio.p9.client import dirents, parse
from virtio.p9.wire import LAYOUTS, NOFID, NOTAG, Msg, message, pack

P9 = importlib.import_module("virtio.9p").P9
LINUX_MSIZE = 128 * 1024        # net/9p/client.c DEFAULT_MSIZE
# Linux's virtio transport limits msize to what fits its 128 descriptors
# (net/9p/trans_virtio.c: PAGE_SIZE * (VIRTQUEUE_NUM - 3)).
LINUX_MAX_MSIZE = 4096 * (128 - 3)
IOHDRSZ = 24                    # Linux's P9_IOHDRSZ: rsize is msize less this
RREAD_HEADER = 11
PAGE = 4096
QTDIR = 0x80
O_RDONLY, O_RDWR, O_CREAT, O_DIRECTORY = 0, 0o2, 0o100, 0o200000
TREE = (10, 44, 4)              # directories, files and subdirectories in each


class Guest:
    """One mounted share; times the device's part of every request."""

    def __init__(self, root: str, msize: int) -> None:
        self.dev = P9(mock_memory(), root)
        (self.q,) = Driver(self.dev).start()
        self.tag = 0
        self.busy = 0.0                 # seconds inside the device
        self.requests = 0
        self.profile: cProfile.Profile | None = None
        self.msize = self.call(Msg.TVERSION, msize, b"9P2000.L")[0]
        self.call(Msg.TATTACH, 0, NOFID, b"", b"", 0)

    def request(self, mtype: int, fields: tuple, in_lens: list[int]) -> tuple[int, bytes]:
        self.tag = (self.tag + 1) % NOTAG
        self.q.add([message(mtype, self.tag, pack(LAYOUTS[mtype][0], *fields))], in_lens,
                   indirect=True)
        if self.profile:
            self.profile.enable()
        start = time.perf_counter()
        self.q.kick()
        self.busy += time.perf_counter() - start
        if self.profile:
            self.profile.disable()
        self.requests += 1
        ((_, written, data),) = self.q.collect()
        return written, data[:written]

    def call(self, mtype: int, *fields, reply: int = 4096) -> list:
        rtype, _, out = parse(self.request(mtype, fields, [reply])[1])
        if rtype != mtype + 1:
            raise OSError(out[0], f"{Msg(mtype).name}: {os.strerror(out[0])}")
        return out

    def measure(self, work, *args) -> tuple[float, int]:
        """(device seconds, requests) of one run of work."""
        self.busy, self.requests = 0.0, 0
        work(self, *args)
        return self.busy, self.requests


def read_file(g: Guest, name: bytes, size: int) -> None:
    g.call(Msg.TWALK, 0, 1, [name])
    g.call(Msg.TLOPEN, 1, O_RDONLY)
    rsize = g.msize - IOHDRSZ
    pages = [PAGE] * (rsize // PAGE) + ([rsize % PAGE] if rsize % PAGE else [])
    offset = 0
    while True:
        written, _ = g.request(Msg.TREAD, (1, offset, rsize), [RREAD_HEADER, *pages])
        if written <= RREAD_HEADER:
            break
        offset += written - RREAD_HEADER
    g.call(Msg.TCLUNK, 1)
    if offset != size:
        raise RuntimeError(f"read {offset} bytes of {size}")


def ls_lr(g: Guest, dfid: int = 0, name: bytes = b"tree", depth: int = 0) -> None:
    """Walk to name in dfid, list it and look up every entry, as ls -lR."""
    fid, lfid = 100 + 2 * depth, 101 + 2 * depth
    g.call(Msg.TWALK, dfid, fid, [name])
    g.call(Msg.TWALK, fid, lfid, [])
    g.call(Msg.TLOPEN, lfid, O_RDONLY | O_DIRECTORY)
    entries, offset = [], 0
    while batch := dirents(g.call(Msg.TREADDIR, lfid, offset, g.msize - RREAD_HEADER,
                                  reply=g.msize)[0]):
        entries += batch
        offset = batch[-1][1]
    g.call(Msg.TCLUNK, lfid)
    subdirs = []
    for qid, _, _, name in entries:
        if name in (b".", b".."):
            continue
        g.call(Msg.TWALK, fid, lfid, [name])
        g.call(Msg.TGETATTR, lfid, 0x7FF)
        g.call(Msg.TCLUNK, lfid)
        if qid[0] & QTDIR:
            subdirs.append(name)
    for sub in subdirs:
        ls_lr(g, fid, sub, depth + 1)
    g.call(Msg.TCLUNK, fid)


def create_stat_unlink(g: Guest, n: int) -> None:
    for i in range(n):
        name = b"f%d" % i
        g.call(Msg.TWALK, 0, 1, [])
        g.call(Msg.TLCREATE, 1, name, O_RDWR | O_CREAT, 0o644, 0)
        g.call(Msg.TGETATTR, 1, 0x7FF)
        g.call(Msg.TCLUNK, 1)
        g.call(Msg.TUNLINKAT, 0, name, 0)


def make_tree(root: str) -> None:
    dirs, files, subdirs = TREE
    for d in range(dirs):
        top = os.path.join(root, "tree", f"d{d}")
        for s in range(subdirs):
            os.makedirs(os.path.join(top, f"sub{s}"))
        for f in range(files):
            with open(os.path.join(top, f"file{f}"), "w") as out:
                out.write("x" * f)


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", type=int, default=8, help="MiB to read")
    ap.add_argument("-n", type=int, default=500, help="create+stat+unlink rounds")
    ap.add_argument("-r", type=int, default=5, help="rounds of each, the best counts")
    ap.add_argument("--msize", type=int, default=LINUX_MSIZE,
                    help=f"what the guest asks for (Linux caps it at {LINUX_MAX_MSIZE})")
    ap.add_argument("--profile", action="store_true",
                    help="print where the device's time goes (cProfile)")
    ap.add_argument("dir", nargs="?", default="/var/tmp",
                    help="where to work (default: a tmp dir on /var/tmp)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        big = os.path.join(root, "big")
        with open(big, "wb") as f:
            f.write(os.urandom(args.m << 20))
        make_tree(root)
        g = Guest(root, min(args.msize, LINUX_MAX_MSIZE))
        g.profile = cProfile.Profile() if args.profile else None
        reads, listings, creates = [], [], []
        for _ in range(args.r):
            drop_cache(big)
            reads.append(g.measure(read_file, b"big", args.m << 20))
            listings.append(g.measure(ls_lr))
            creates.append(g.measure(create_stat_unlink, args.n))
        g.dev.close()
    busy, requests = min(reads)
    print(f"cold read, msize {g.msize}: {(args.m << 20) / busy / 1e6:8.0f} MB/s"
          f"  ({busy / requests * 1e6:.0f} us a request)")
    busy, requests = min(listings)
    print(f"ls -lR, {requests} requests: {requests / busy:8.0f} requests/s")
    busy, requests = min(creates)
    print(f"create+stat+unlink:     {args.n / busy:8.0f} rounds/s"
          f"  ({requests / busy:.0f} requests/s)")
    if g.profile:
        pstats.Stats(g.profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
