#!/usr/bin/env python3
"""Throughput of the userspace virtio-vsock back end, driven by the mock
driver: a guest-to-host stream into a host unix listener.

    virtio_vsock.py [-s MIB] [-p]

The guest connects to host port 5000 (the listener `<base>_5000`, a
child process reading to the end) and sends SIZE MiB as Linux's vsock
transport does: packets of 4 KiB and 64 KiB, each a header and its
payload in an indirect table, as many as its credit allows, 1 or 4 of
them per transmit kick; it takes the credit updates from the receive
queue and posts buffers again.  Prints MB/s of the device model's own
CPU time (its notify() and the I/O thread's host_events(): CPU time, so
that others' load on the machine counts less), and per packet the
interrupts and credit updates, the best of three rounds, and the Python
function calls a packet costs (counted by cProfile, the connection's
set-up included), which show the same without the noise.  -p prints a
cProfile of a 64 KiB run.
"""

import argparse
import cProfile
import os
import pstats
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from include.uapi import lib
from virtio.mock import Driver, mock_memory
from virtio.vsock import HDR, OP, Vsock

CID, PORT, GUEST_PORT = 3, 5000, 1234
RX_BUFS = 64
RX_BUF = HDR.size + 4096        # what Linux posts
ROUNDS = 3                      # the best of
CALLS_OF = 256                  # packets whose Python calls are counted
WAIT = 10.0                     # seconds the host reader gets to make room

READER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
buf = bytearray(1 << 20)
got = 0
while n := c.recv_into(buf):
    got += n
print(got, flush=True)
"""


class Stream:
    """The guest's end of one connection, and the device's time."""

    def __init__(self, base: str, prof: cProfile.Profile | None) -> None:
        self.dev = Vsock(mock_memory(), CID, base)
        self.drv = Driver(self.dev)
        self.rx, self.tx, _ = self.drv.start()
        self.prof = prof
        self.spent = 0.0
        self.sent = 0
        self.buf_alloc = self.fwd_cnt = 0
        self.credit_updates = 0
        for _ in range(RX_BUFS):
            self.rx.add([], [RX_BUF])
        self.device(self.rx.kick)

    def device(self, call) -> None:
        start = time.process_time()
        if self.prof:
            self.prof.runcall(call)
        else:
            call()
        self.spent += time.process_time() - start

    def send(self, op: int, payloads: list[bytes]) -> None:
        for data in payloads:
            hdr = HDR.pack(CID, 2, GUEST_PORT, PORT, len(data), lib.VIRTIO_VSOCK_TYPE_STREAM,
                           op, 0, 256 << 10, 0)
            self.tx.add([hdr, data] if data else [hdr], [], indirect=True)
            self.sent += len(data)
        self.device(self.tx.kick)
        self.tx.collect()
        self.tx.set_used_event(self.tx.last_used)   # as Linux's callbacks ask

    def receive(self) -> list[int]:
        """The ops of the packets the device put in the receive queue,
        their credit taken and their buffers posted again."""
        ops = []
        for _, _, data in self.rx.collect():
            hdr = HDR.unpack(data[:HDR.size])
            ops.append(hdr[6])
            self.buf_alloc, self.fwd_cnt = hdr[8], hdr[9]
            self.credit_updates += hdr[6] == OP["CREDIT_UPDATE"]
            self.rx.add([], [RX_BUF])
        self.rx.set_used_event(self.rx.last_used)
        if ops:
            self.device(self.rx.kick)
        return ops

    def credit(self) -> int:
        return self.buf_alloc - (self.sent - self.fwd_cnt)

    def wait_host(self) -> None:
        """Let the I/O thread serve the host socket once it is ready."""
        if not select.select([self.dev.epoll.fileno()], [], [], WAIT)[0]:
            raise SystemExit("the host side never got ready")
        self.device(self.dev.host_events)


@dataclass
class Figures:
    mbps: float
    irqs: float             # per packet
    credit_updates: float   # per packet


def run(packet: int, batch: int, total: int, prof: cProfile.Profile | None) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "vm.vsock")
        reader = subprocess.Popen([sys.executable, "-c", READER, f"{base}_{PORT}"],
                                  stdout=subprocess.PIPE, text=True)
        s = None
        try:
            assert reader.stdout.readline().strip() == "ready"
            s = Stream(base, prof)
            s.send(OP["REQUEST"], [b""])
            if s.receive() != [OP["RESPONSE"]]:
                raise SystemExit("the host end refused the connection")
            payload = bytes(packet)
            packets = 0
            while s.sent < total:
                n = min(batch, s.credit() // packet, -(-(total - s.sent) // packet))
                if n:
                    s.send(OP["RW"], [payload[:min(packet, total - s.sent)]
                                      for _ in range(n)])
                    packets += n
                if not s.receive() and s.credit() < packet:
                    s.wait_host()
                    s.receive()
            s.send(OP["SHUTDOWN"], [b""])
            while s.dev.conns[(GUEST_PORT, PORT)].to_host:
                s.wait_host()
            s.dev.close()       # the reader's EOF (closing twice is harmless)
            got = int(reader.communicate(timeout=WAIT)[0])
            if got != total:
                raise SystemExit(f"the host got {got} of {total} bytes")
            irqs = sum(s.drv.transport.queue_irqs.values())
            return Figures(total / s.spent / 1e6, irqs / packets, s.credit_updates / packets)
        finally:
            if s is not None:
                s.dev.close()
            reader.kill()
            reader.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-s", "--size", type=int, default=64, help="MiB to send")
    p.add_argument("-p", "--profile", action="store_true")
    args = p.parse_args()
    total = args.size << 20
    print(f"virtio-vsock userspace back end, guest to host, {args.size} MiB")
    for packet in (4 << 10, 64 << 10):
        for batch in (1, 4):
            size = total if packet > 4096 else total // 8
            best = max((run(packet, batch, size, None) for _ in range(ROUNDS)),
                       key=lambda f: f.mbps)
            prof = cProfile.Profile()
            run(packet, batch, CALLS_OF * packet, prof)
            calls = pstats.Stats(prof).total_calls / CALLS_OF
            print(f"  {packet >> 10:2d} KiB packets, {batch} a kick: {best.mbps:6.1f} MB/s  "
                  f"per packet: {calls:4.0f} Python calls, {best.irqs:.2f} interrupts, "
                  f"{best.credit_updates:.2f} credit updates")
    if args.profile:
        prof = cProfile.Profile()
        run(64 << 10, 1, total, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
