#!/usr/bin/env python3
"""Throughput of virtio-scsi and lkvm's SCSI target, driven by the mock
driver.

    virtio_scsi.py [-s MIB] [-p] [DIR]

Writes then reads a SIZE-MiB raw image in DIR (default: a temporary dir
on /var/tmp) with WRITE(10) and READ(10) of 4 KiB and 1 MiB, one command
per kick as dd's O_DIRECT does, each in its own indirect table with the
data in 8 KiB segments (a 1 MiB one: 128 of them, within seg_max), and
prints MB/s and commands/s of the device model's own CPU time (ring
handling, the CDB, preadv/pwritev into guest memory: CPU time, so that
others' load on the machine counts less); the page cache serves the
reads.  Each is the best of three rounds; the Python function calls a
command costs (counted by cProfile) show the same without the noise.
-p prints a cProfile of the 1 MiB reads.
"""

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from disk.core import open_disk
from include.uapi import lib
from scsi import sbc
from virtio.mock import Driver, mock_memory
from virtio.scsi import CDB_OFFSET, REQUEST, RESP, SENSE_OFFSET, Scsi

LUN0 = bytes((1, 0, 0x40, 0, 0, 0, 0, 0))
SEGMENT = 8 << 10
ROUNDS = 3                      # the best of
CALLS_OF = 16                   # commands whose Python calls are counted
RESP_SIZE = SENSE_OFFSET + lib.VIRTIO_SCSI_SENSE_DEFAULT_SIZE


def command(opcode: int, lba: int, blocks: int) -> bytes:
    cdb = bytes((opcode, 0)) + lba.to_bytes(4, "big") + bytes(1) + \
        blocks.to_bytes(2, "big") + bytes(1)
    return LUN0 + bytes(CDB_OFFSET - len(LUN0)) + cdb.ljust(lib.VIRTIO_SCSI_CDB_DEFAULT_SIZE,
                                                             b"\0")


def run(q, opcode: int, req: int, total: int, prof: cProfile.Profile | None = None) -> float:
    """MB/s of `total` bytes in commands of `req` bytes, counting only the
    device's time (its notify(), from the kick to the used ring)."""
    segs = [min(SEGMENT, req)] * max(req // SEGMENT, 1)
    data = [bytes(n) for n in segs]
    spent = 0.0
    for off in range(0, total, req):
        hdr = command(opcode, off // sbc.BLOCK, req // sbc.BLOCK)
        if opcode == lib.WRITE_10:
            q.add([hdr, *data], [RESP_SIZE], indirect=True)
        else:
            q.add([hdr], [RESP_SIZE, *segs], indirect=True)
        start = time.process_time()
        if prof:
            prof.runcall(q.kick)
        else:
            q.kick()
        spent += time.process_time() - start
        ((_, _, resp),) = q.collect()
        if RESP.unpack_from(resp)[3:] != (0, lib.VIRTIO_SCSI_S_OK):
            raise SystemExit("a command failed")
    return total / spent / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-s", "--size", type=int, default=64, help="image size in MiB")
    p.add_argument("-p", "--profile", action="store_true")
    p.add_argument("dir", nargs="?", default=None)
    args = p.parse_args()
    total = args.size << 20
    print(f"virtio-scsi device model, {args.size} MiB raw image, one command per kick")
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp") as tmp:
        path = os.path.join(tmp, "bench.raw")
        with open(path, "wb") as f:
            f.truncate(total)
        dev = Scsi(mock_memory(), [sbc.BlockLun(open_disk(path), "bench")])
        try:
            q = Driver(dev).start()[REQUEST]
            for req in (4096, 1 << 20):
                size = total if req > 4096 else total // 16
                for name, opcode in (("write", lib.WRITE_10), ("read", lib.READ_10)):
                    best = max(run(q, opcode, req, size) for _ in range(ROUNDS))
                    prof = cProfile.Profile()
                    run(q, opcode, req, CALLS_OF * req, prof)
                    calls = pstats.Stats(prof).total_calls / CALLS_OF
                    print(f"  {req >> 10:5d} KiB {name:5s} {best:8.1f} MB/s "
                          f"({best * 1e6 / req:6.0f}/s)  {calls:5.0f} Python calls a command")
            if args.profile:
                prof = cProfile.Profile()
                run(q, lib.READ_10, 1 << 20, total, prof)
                pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        finally:
            dev.close()


if __name__ == "__main__":
    main()
