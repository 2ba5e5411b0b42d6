#!/usr/bin/env python3
"""Throughput of the virtio-blk device model, driven by the mock driver.

    virtio_blk.py [-s MIB] [DIR]

Writes then reads a SIZE-MiB image in DIR (default: a temporary dir on
/var/tmp) with 4 KiB and 1 MiB requests, a queue's worth in flight per
kick, and prints MB/s: a raw image, then an empty qcow2 one (made by
qemu-img, where it is installed; its writes allocate clusters).  No VM:
this is the device model's own cost (ring handling, preadv/pwritev into
guest memory, qcow2's tables); the page cache serves the reads.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from disk.core import open_disk
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


def raw_image(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def qcow2_image(path: str, size: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "compat=1.1,cluster_size=65536", path, str(size)], check=True, timeout=60)


def formats() -> dict:
    """The image formats measured, and how each is made empty."""
    made = {"raw": raw_image}
    if shutil.which("qemu-img"):
        made["qcow2"] = qcow2_image
    return made


def measure(path: str, total: int) -> list[tuple[int, float, float]]:
    """(request size, write MB/s, read MB/s) on the image at `path`."""
    dev = Blk(mock_memory(), open_disk(path), "bench")
    try:
        (q,) = Driver(dev).start()
        return [(req, run(q, lib.VIRTIO_BLK_T_OUT, req, total),
                 run(q, lib.VIRTIO_BLK_T_IN, req, total)) for req in (4096, 1 << 20)]
    finally:
        dev.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-s", "--size", type=int, default=64, help="image size in MiB")
    p.add_argument("dir", nargs="?", default=None)
    args = p.parse_args()
    print(f"virtio-blk device model, {args.size} MiB image, {BATCH} requests per kick")
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp") as tmp:
        for fmt, make in formats().items():
            path = os.path.join(tmp, f"bench.{fmt}")
            make(path, args.size << 20)
            for req, w, r in measure(path, args.size << 20):
                print(f"  {fmt:5s} {req >> 10:5d} KiB requests: write {w:8.1f} MB/s   "
                      f"read {r:8.1f} MB/s")


if __name__ == "__main__":
    main()
