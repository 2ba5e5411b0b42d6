#!/usr/bin/env python3
"""Micro-benchmark of the 9p server through Server.handle().

    p9.py [-n OPS] [-m MIB] [--msize BYTES] [DIR]

Prints create+stat+unlink operations per second (Tlcreate, Tgetattr,
Tunlinkat, Tclunk and the Twalk clone before them, as Linux sends them)
and sequential read MB/s of one file in msize-sized Tread requests.  The
transport is left out: this is the server's own cost.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from virtio.p9 import Server
from virtio.p9.client import Client
from virtio.p9.wire import Msg

O_RDWR, O_CREAT = 0o2, 0o100


def create_stat_unlink(c: Client, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        name = b"f%d" % i
        c.rpc(Msg.TWALK, 0, 1, [])
        c.rpc(Msg.TLCREATE, 1, name, O_RDWR | O_CREAT, 0o644, 0)
        c.rpc(Msg.TGETATTR, 1, 0x7FF)
        c.rpc(Msg.TCLUNK, 1)
        c.rpc(Msg.TUNLINKAT, 0, name, 0)
    return n / (time.perf_counter() - start)


def sequential_read(c: Client, root: str, mib: int) -> float:
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(os.urandom(1 << 20) * mib)
    c.walk(0, 2, b"big")
    c.rpc(Msg.TLOPEN, 2, 0)
    start = time.perf_counter()
    got = len(c.read_all(2))
    elapsed = time.perf_counter() - start
    assert got == mib << 20
    return got / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="create+stat+unlink rounds")
    ap.add_argument("-m", type=int, default=64, help="MiB to read")
    ap.add_argument("--msize", type=int, default=512 * 1024)
    ap.add_argument("dir", nargs="?", help="where to work (default: a tmp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        server = Server(root)
        c = Client(server.handle)
        c.mount(args.msize)
        print(f"create+stat+unlink: {create_stat_unlink(c, args.n):8.0f} ops/s")
        print(f"sequential read:    {sequential_read(c, root, args.m):8.0f} MB/s"
              f" (msize {c.msize})")
        server.close()


if __name__ == "__main__":
    main()
