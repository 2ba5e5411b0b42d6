#!/usr/bin/env python3
"""9p as a Linux guest sees it: lkvm's 9p server against QEMU's, same
kernel (the one `make guest-kernel` builds), same rootfs, same guest init.

    p9_guest.py [-n OPS] [-m MIB]

Each VMM boots a rootfs made as `lkvm setup` makes it, with a third 9p
share holding a MIB-MiB file written on the host; in the guest, the
host's python3 (run through the rootfs's links into /host) times OPS
rounds of create+stat+unlink in that share and one cold sequential read
of the file.  Where this host's KVM can't run Linux guests (nested PVM),
everything runs inside the nested test host (L1).  Prints ops/s and MB/s
per VMM and lkvm/QEMU ratios.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _sandbox import LKVM, RAM_MIB, qemu_on_rootfs  # noqa: E402

from tests.testhost import kvmconfig_kernel  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

TIMEOUT = 300          # one boot and measurement
ATTEMPTS = 3
TAG = "bench"
GUEST_DIR = "/mnt/bench"
GUEST_BENCH = """
import os, sys, time
n, d = int(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
for i in range(n):
    p = f"{d}/f{i}"
    os.close(os.open(p, os.O_CREAT | os.O_RDWR, 0o644))
    os.stat(p)
    os.unlink(p)
ops = n / (time.perf_counter() - start)
start, got = time.perf_counter(), 0
with open(f"{d}/big", "rb", buffering=0) as f:
    while chunk := f.read(1 << 20):
        got += len(chunk)
print("BENCH", ops, got / (time.perf_counter() - start) / 1e6)
"""


def guest_command(ops: int) -> list[str]:
    script = (f"mkdir -p {GUEST_DIR} && "
              f"mount -t 9p -o trans=virtio,version=9p2000.L {TAG} {GUEST_DIR} && "
              f"exec python3 -c {shlex.quote(GUEST_BENCH)} {ops} {GUEST_DIR}")
    return ["sh", "-c", script]


def lkvm(kernel: str, share: str, ops: int) -> list[str]:
    return [LKVM, "sandbox", "-k", kernel, "-m", RAM_MIB, "-c", "1", "-p", "quiet",
            "--9p", f"{share},{TAG}", "--", *guest_command(ops)]


def qemu(kernel: str, share: str, ops: int) -> list[str]:
    return qemu_on_rootfs(kernel, guest_command(ops), shares=[(share, TAG)])


def measure(name: str, cmd: list[str]) -> list[float] | None:
    """[ops/s, MB/s] from one boot, or None when it gave none."""
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        out.seek(0)
        text = out.read()
    line = next((x for x in text.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        print(f"p9_guest.py: {name} gave no result in {TIMEOUT} s:\n{text[-1500:]}",
              file=sys.stderr)
        return None
    return [float(x) for x in line.split()[1:]]


def inner(kernel: str, ops: int, mib: int) -> dict[str, list[float]]:
    os.environ["HOME"] = tempfile.mkdtemp(prefix="lkvm-bench-")  # a rootfs of its own
    results = {}
    for name, make in (("lkvm", lkvm), ("qemu", qemu)):
        # A boot that never gets going (seen in the nested test host) is
        # tried again rather than lose the comparison.
        for _ in range(ATTEMPTS):
            with tempfile.TemporaryDirectory() as share:
                with open(os.path.join(share, "big"), "wb") as f:
                    f.write(os.urandom(1 << 20) * mib)
                if (got := measure(name, make(kernel, share, ops))) is not None:
                    results[name] = got
                    break
    return results


def report(results: dict[str, list[float]], ops: int, mib: int) -> None:
    print(f"9p in a Linux guest ({ops} create+stat+unlink, {mib} MiB cold read):")
    for name, (rate, mbs) in results.items():
        print(f"  {name:5s} {rate:8.0f} ops/s  {mbs:8.1f} MB/s")
    if len(results) == 2:
        (lr, lm), (qr, qm) = results["lkvm"], results["qemu"]
        print(f"  lkvm/qemu {lr / qr:6.2f}        {lm / qm:6.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--ops", type=int, default=100)
    ap.add_argument("-m", "--mib", type=int, default=8)
    ap.add_argument("--inner", metavar="KERNEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.inner, args.ops, args.mib)))
        return 0
    kernel = kvmconfig_kernel()
    if kernel is None:
        print("p9_guest.py: no guest kernel with 9p built in: run make guest-kernel; skipped")
        return 0
    results = run_bench(
        __file__, ["-n", str(args.ops), "-m", str(args.mib), "--inner", str(kernel)],
        timeout=2 * ATTEMPTS * TIMEOUT + 60)
    report(results, args.ops, args.mib)
    return 0 if len(results) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
