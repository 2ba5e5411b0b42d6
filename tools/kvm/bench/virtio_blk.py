#!/usr/bin/env python3
"""Throughput of the virtio-blk device model, driven by the mock driver.

    virtio_blk.py [-s MIB] [DIR]

Writes then reads a SIZE-MiB image in DIR (default: a temporary dir on
/var/tmp) with 4 KiB and 1 MiB requests, a queue's worth in flight per
kick, and prints MB/s.  No VM: this is the device model's own cost
(ring handling, preadv/pwritev into guest memory); the page cache serves
the reads.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from disk.raw import RawDisk
from include.uapi import lib
from virtio.blk import OUTHDR, Blk
from virtio.mock import Driver, mock_memory

SECTOR = 512
BATCH = 32


def run(q, kind: int, req: int, total: int) -> float:
    data = bytes(req)
    start = time.perf_counter()
    for base in range(0, total, req * BATCH):
        for off in range(base, min(base + req * BATCH, total), req):
            hdr = OUTHDR.pack(kind, 0, off // SECTOR)
            if kind == lib.VIRTIO_BLK_T_OUT:
                q.add([hdr, data], [1], indirect=True)
            else:
                q.add([hdr], [req, 1], indirect=True)
        q.kick()
        if any(d[-1] != lib.VIRTIO_BLK_S_OK for _, _, d in q.collect()):
            raise SystemExit("a request failed")
    return total / (time.perf_counter() - start) / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-s", "--size", type=int, default=64, help="image size in MiB")
    p.add_argument("dir", nargs="?", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp") as tmp:
        path = os.path.join(tmp, "bench.img")
        with open(path, "wb") as f:
            f.truncate(args.size << 20)
        dev = Blk(mock_memory(), RawDisk(path), "bench")
        (q,) = Driver(dev).start()
        total = args.size << 20
        print(f"virtio-blk device model, {args.size} MiB image, {BATCH} requests per kick")
        for req in (4096, 1 << 20):
            w = run(q, lib.VIRTIO_BLK_T_OUT, req, total)
            r = run(q, lib.VIRTIO_BLK_T_IN, req, total)
            print(f"  {req >> 10:5d} KiB requests: write {w:8.1f} MB/s   read {r:8.1f} MB/s")
        dev.close()


if __name__ == "__main__":
    main()
