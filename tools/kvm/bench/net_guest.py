#!/usr/bin/env python3
"""virtio-net as a Linux guest sees it: lkvm's device against QEMU's with
the same back end, same kernel (the one `make guest-kernel` builds),
same rootfs, same guest init.

    net_guest.py [-m MIB] [-r ROUND_TRIPS]

Three back ends, each VMM in turn:
  passt   user mode: lkvm's passt, and QEMU's `-netdev stream` on a
          socket pre-connected to a passt started the same way
          (net/passt.py's arguments), so the two differ only in the VMM;
  tap     a tap with the host at 192.168.33.1/24 (lkvm sets up its own;
          QEMU gets one made the same way), vnet headers and offloads;
  vhost   the same tap with its queues served by /dev/vhost-net.
The guest (one CPU, 192.168.33.15/24 set by hand, no DHCP in either)
runs a Python client against a server in this process, reached at
192.168.33.1 (passt maps it to the loopback): MIB MiB guest to host
(timed until the host has read the last byte), MIB MiB host to guest,
then ROUND_TRIPS one-byte request/responses with TCP_NODELAY.  Where
this host's KVM can't run Linux guests (nested PVM) everything runs in
the nested test host (L1).  Prints MB/s and transactions/s per row and
the lkvm/QEMU ratio of each (higher is better everywhere).
"""

import argparse
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _sandbox import LKVM, RAM_MIB, qemu_on_rootfs  # noqa: E402

from net.defaults import GUEST_IP, GUEST_MAC, HOST_IP, HOST_MAC, PREFIX_LEN  # noqa: E402
from net.passt import has_default_route, passt_argv  # noqa: E402
from rootfs import tree  # noqa: E402
from tests.testhost import kvmconfig_kernel  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

TIMEOUT = 300           # one boot and measurement
ATTEMPTS = 2
CHUNK = 1 << 16
QEMU_TAP = "lkvmbench0"
TESTS = ("g2h", "h2g", "rr")        # MB/s, MB/s, transactions/s
UNITS = {"g2h": "MB/s", "h2g": "MB/s", "rr": "trans/s"}
# The guest's side: one connection per test, the first byte naming it
# (S: the host sinks what comes, then says 'k'; G: the host sends the
# size asked for; R: the host echoes each byte).
CLIENT = r"""
import socket, struct, sys, time
host, port, size, trips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def conn(kind):
    s = socket.create_connection((host, port), timeout=120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(kind + struct.pack("!Q", size))
    return s
def g2h():
    with conn(b"S") as s:
        buf = bytes(65536)
        t = time.monotonic()
        for _ in range(size // len(buf)):
            s.sendall(buf)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b"k", "no acknowledgement"
        return size, time.monotonic() - t
def h2g():
    with conn(b"G") as s:
        got, t = 0, time.monotonic()
        while got < size:
            n = len(s.recv(1 << 20))
            assert n, f"ended after {got} bytes"
            got += n
        return size, time.monotonic() - t
def rr():
    with conn(b"R") as s:
        t = time.monotonic()
        for _ in range(trips):
            s.sendall(b"x")
            assert s.recv(1) == b"x", "no echo"
        return trips, time.monotonic() - t
for test in (g2h, h2g, rr):
    try:
        print("BENCH", test.__name__, *test(), flush=True)
    except (OSError, AssertionError) as e:
        print("BENCH", test.__name__, "failed:", repr(e), flush=True)
"""
SETUP = f"ip addr add {GUEST_IP}/{PREFIX_LEN} dev eth0 2>/dev/null; ip link set eth0 up"
RESULT = re.compile(r"BENCH (\S+) (\d+) ([0-9.e+-]+)")


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        while len(head) < 9 and (part := s.recv(9 - len(head))):
            head += part
        if len(head) < 9:
            return
        kind, size = head[:1], int.from_bytes(head[1:], "big")
        if kind == b"S":
            while s.recv(1 << 20):
                pass
            s.sendall(b"k")
        elif kind == b"G":
            buf = bytes(CHUNK)
            for _ in range(size // CHUNK):
                s.sendall(buf)
        elif kind == b"R":
            while byte := s.recv(1):
                s.sendall(byte)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def server() -> Iterator[int]:
    """The host's end, on every address (the loopback for passt's guests,
    the tap's for the others); yields its port."""
    with Server(("0.0.0.0", 0), Handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield srv.server_address[1]
        finally:
            srv.shutdown()
            thread.join(10)


def guest_command(port: int, mib: int, trips: int) -> list[str]:
    script = f"{SETUP}; echo BENCH start; exec python3 -c \"$0\" {HOST_IP} {port} " \
        f"{mib << 20} {trips}"
    return ["sh", "-c", script, CLIENT]


@contextmanager
def lkvm(kernel: str, backend: str, command: list[str]) -> Iterator[tuple[list[str], tuple]]:
    """lkvm's command line for `backend`, and the fds it inherits."""
    nic = {"passt": "mode=user", "tap": "mode=tap", "vhost": "mode=tap,vhost=1"}[backend]
    yield [LKVM, "sandbox", "-k", kernel, "-m", RAM_MIB, "-c", "1", "-p", "quiet",
           "--no-dhcp", "-n", nic, "--", *command], ()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30)


@contextmanager
def qemu(kernel: str, backend: str, command: list[str]) -> Iterator[tuple[list[str], tuple]]:
    """QEMU's command line for `backend` (its passt or its tap made
    first, and ended after), and the fds it inherits."""
    nic = ["-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}"]
    if backend == "passt":
        ours, theirs = socket.socketpair()
        passt = subprocess.Popen(
            passt_argv(theirs.fileno(), GUEST_IP, HOST_IP, PREFIX_LEN, HOST_MAC,
                       not has_default_route()), pass_fds=(theirs.fileno(),))
        theirs.close()
        try:
            stream = f"stream,id=n0,server=off,addr.type=fd,addr.str={ours.fileno()}"
            yield qemu_on_rootfs(kernel, command, extra=["-netdev", stream, *nic]), \
                (ours.fileno(),)
        finally:
            ours.close()        # -1: passt ends with its client
            passt.wait(10)
        return
    ip("tuntap", "add", "dev", QEMU_TAP, "mode", "tap", "vnet_hdr")
    try:
        ip("addr", "add", f"{HOST_IP}/{PREFIX_LEN}", "dev", QEMU_TAP)
        ip("link", "set", QEMU_TAP, "up")
        vhost = "on" if backend == "vhost" else "off"
        yield qemu_on_rootfs(kernel, command, extra=[
            "-netdev", f"tap,id=n0,ifname={QEMU_TAP},script=no,downscript=no,vhost={vhost}",
            *nic]), ()
    finally:
        ip("link", "del", QEMU_TAP)


BACKENDS = ("passt", "tap", "vhost")
VMMS: dict[str, Callable] = {"lkvm": lkvm, "qemu": qemu}


def parse(text: str) -> dict[str, float]:
    """MB/s or transactions/s per test the guest finished."""
    got = {}
    for m in filter(None, map(RESULT.search, text.splitlines())):
        count, seconds = int(m[2]), float(m[3])
        rate = count / seconds if seconds > 0 else float("inf")
        got[m[1]] = rate / 1e6 if UNITS.get(m[1]) == "MB/s" else rate
    return got


def measure(name: str, cmd: list[str], fds: tuple) -> tuple[bool, dict[str, float] | None]:
    """(whether the guest got to the measurement, the rates of the tests
    that gave one, or None when none did)."""
    ended = "ended"
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           timeout=TIMEOUT, pass_fds=fds)
        except subprocess.TimeoutExpired:
            ended = f"was killed after {TIMEOUT} s"
        out.seek(0)
        text = out.read()
    started = any(x.strip() == "BENCH start" for x in text.splitlines())
    got = parse(text)
    if len(got) < len(TESTS):
        what = "failed" if started else "never got to the measurement"
        print(f"net_guest.py: {name} {what} and {ended}:\n{text[-1500:]}", file=sys.stderr)
    return started, got or None


def inner(kernel: str, mib: int, trips: int,
          backends: list[str]) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="lkvm-bench-") as home, server() as port:
        os.environ["HOME"] = home
        tree.prepare(tree.DEFAULT)
        command = guest_command(port, mib, trips)
        for backend in backends:
            for vmm, setup in VMMS.items():
                # A boot that never gets going (seen in the nested test
                # host) is tried again rather than lose the comparison.
                for _ in range(ATTEMPTS):
                    with setup(kernel, backend, command) as (cmd, fds):
                        started, got = measure(f"{vmm} {backend}", cmd, fds)
                    if got is not None:
                        results[f"{vmm} {backend}"] = got
                    if started:
                        break
    return results


def report(results: dict[str, dict[str, float]], mib: int, trips: int) -> None:
    print(f"virtio-net in a Linux guest (TCP, {mib} MiB each way, {trips} one-byte "
          "round trips):")
    print("                 " + "".join(f"{f'{t} {UNITS[t]}':>16s}" for t in TESTS))
    for row, got in results.items():
        print(f"  {row:15s}" + "".join(f"{got[t]:16.1f}" if t in got else f"{'-':>16s}"
                                       for t in TESTS))
    for backend in BACKENDS:
        lk, qe = results.get(f"lkvm {backend}"), results.get(f"qemu {backend}")
        if lk and qe:
            print(f"  {'lkvm/qemu ' + backend:15s}" +
                  "".join(f"{lk[t] / qe[t]:16.2f}" if t in lk and t in qe else f"{'-':>16s}"
                          for t in TESTS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--mib", type=int, default=64, help="MiB sent each way")
    ap.add_argument("-r", "--round-trips", type=int, default=2000,
                    help="one-byte request/responses")
    ap.add_argument("-b", "--backend", action="append", choices=BACKENDS,
                    help="measure only this back end (repeatable; default all)")
    ap.add_argument("--inner", metavar="KERNEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mib < 1 or args.round_trips < 1:
        ap.error("give at least 1 MiB and 1 round trip")
    backends = args.backend or list(BACKENDS)
    if args.inner:
        print(json.dumps(inner(args.inner, args.mib, args.round_trips, backends)))
        return 0
    kernel = kvmconfig_kernel()
    if kernel is None:
        print("net_guest.py: no guest kernel with virtio-net built in: "
              "run make guest-kernel; skipped")
        return 0
    results = run_bench(
        __file__, ["-m", str(args.mib), "-r", str(args.round_trips), "--inner", str(kernel),
                   *(f"--backend={b}" for b in backends)],
        timeout=len(backends) * len(VMMS) * ATTEMPTS * TIMEOUT + 60)
    report(results, args.mib, args.round_trips)
    complete = [row for row in results.values() if len(row) == len(TESTS)]
    return 0 if len(complete) == len(backends) * len(VMMS) else 1


if __name__ == "__main__":
    sys.exit(main())
