#!/usr/bin/env python3
"""virtio-vsock stream throughput as a Linux guest sees it: lkvm's own
back end (host end on a unix socket) and its vhost-vsock back end against
QEMU's vhost-vsock-pci, same kernel (the one `make guest-kernel` builds),
same rootfs, same guest program.

    vsock_guest.py [-m MIB]

The guest (Python from the rootfs) connects to host port 5000 and sends
MIB MiB in 64 KiB writes; the host program accepts, reads to the end and
times from its first byte to the last, then answers so the guest knows
all arrived.  Where this host's KVM can't run Linux guests, everything
runs inside the nested test host (L1), whose kernel has vhost_vsock.
Prints MB/s per back end and the ratios to QEMU; the goal is 0.9.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _sandbox import LKVM, RAM_MIB, qemu_on_rootfs  # noqa: E402

from rootfs import tree  # noqa: E402
from tests.testhost import kvmconfig_kernel  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

CID = 9
PORT = 5000
TIMEOUT = 300           # one boot and transfer
ATTEMPTS = 2            # a boot that never connects is tried again
GOAL = 0.9

GUEST = r"""
import socket, sys
left = int(sys.argv[1]) << 20
buf = bytes(1 << 16)
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(120)
s.connect((socket.VMADDR_CID_HOST, 5000))
while left:
    left -= s.send(buf[:min(left, len(buf))])
s.shutdown(socket.SHUT_WR)
print("guest: host says", s.recv(64).decode(), flush=True)
"""


def lkvm(kernel: str, mib: int, backend: str, base: str) -> list[str]:
    uds = ["--vsock-uds", base] if backend == "user" else []
    return [LKVM, "sandbox", "-k", kernel, "-m", RAM_MIB, "-c", "1", "-p", "quiet",
            "-d", tree.DEFAULT, "--vsock", str(CID), "--vsock-backend", backend, *uds,
            "--", "python3", "-c", GUEST, str(mib)]


def qemu(kernel: str, mib: int, backend: str, base: str) -> list[str]:
    return qemu_on_rootfs(kernel, ["python3", "-c", GUEST, str(mib)],
                          extra=["-device", f"vhost-vsock-pci,guest-cid={CID}"])


# row: (VMM, back end) -- the back end says where the host end listens.
ROWS = {"lkvm user": (lkvm, "user"), "lkvm vhost": (lkvm, "vhost"),
        "qemu vhost": (qemu, "vhost")}


def listener(backend: str, base: str) -> socket.socket:
    if backend == "user":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{base}_{PORT}")
    else:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.bind((socket.VMADDR_CID_ANY, PORT))
    s.listen(1)
    s.settimeout(TIMEOUT)
    return s


def receive(srv: socket.socket, result: dict) -> None:
    """Accept one connection and read it to its end: bytes and seconds
    from the first byte to the last."""
    try:
        conn, _ = srv.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(TIMEOUT)
        first = conn.recv(1 << 16)
        start, size = time.monotonic(), len(first)
        while data := conn.recv(1 << 20):
            size += len(data)
        result["seconds"] = time.monotonic() - start
        result["bytes"] = size
        conn.sendall(b"done")


def measure(name: str, cmd: list[str], srv: socket.socket, mib: int) -> float | None:
    result: dict = {}
    t = threading.Thread(target=receive, args=(srv, result))
    t.start()
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=TIMEOUT)
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        text = f"killed after {TIMEOUT} s"
    try:
        srv.shutdown(socket.SHUT_RDWR)      # wakes an accept that never came
    except OSError:
        pass
    srv.close()
    t.join()
    if result.get("bytes") != mib << 20 or "guest: host says done" not in text:
        print(f"vsock_guest.py: {name}: {result or 'no connection'}:\n{text[-1500:]}",
              file=sys.stderr)
        return None
    return result["bytes"] / result["seconds"] / 1e6


def inner(kernel: str, mib: int) -> dict[str, float]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="lkvm-bench-") as home:
        os.environ["HOME"] = home
        tree.prepare(tree.DEFAULT)
        base = os.path.join(home, "vm.vsock")
        for row, (command, backend) in ROWS.items():
            for _ in range(ATTEMPTS):
                got = measure(row, command(kernel, mib, backend, base),
                              listener(backend, base), mib)
                if os.path.exists(f"{base}_{PORT}"):
                    os.unlink(f"{base}_{PORT}")
                if got is not None:
                    results[row] = got
                    break
    return results


def report(results: dict[str, float], mib: int) -> None:
    print(f"virtio-vsock in a Linux guest ({mib} MiB guest to host), MB/s; "
          f"goal lkvm/qemu >= {GOAL}:")
    qemu_mbs = results.get("qemu vhost")
    for row, mbs in results.items():
        ratio = f"{mbs / qemu_mbs:6.2f}x qemu" if qemu_mbs else ""
        print(f"  {row:12s}{mbs:10.1f}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--mib", type=int, default=256, help="MiB the guest sends")
    ap.add_argument("--inner", metavar="KERNEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mib < 1:
        ap.error("give at least 1 MiB")
    if args.inner:
        print(json.dumps(inner(args.inner, args.mib)))
        return 0
    kernel = kvmconfig_kernel()
    if kernel is None:
        print("vsock_guest.py: no guest kernel with vsock built in: run make guest-kernel; "
              "skipped")
        return 0
    results = run_bench(__file__, ["-m", str(args.mib), "--inner", str(kernel)],
                        timeout=len(ROWS) * ATTEMPTS * TIMEOUT + 60)
    report(results, args.mib)
    return 0 if len(results) == len(ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
