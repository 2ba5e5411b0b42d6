#!/usr/bin/env python3
"""Boot-to-init time of a Linux guest: lkvm on each boot path against QEMU
(-M microvm and -M pc), same kernel (Debian's cloud kernel), same initrd,
same run.

    boot.py [-n RUNS]

Each run starts the VMM and stops its clock when the guest's init prints
its marker.  Where this host's KVM can't run Linux guests (nested PVM),
the whole measurement runs inside the nested test host (L1).  Prints
medians and lkvm/QEMU ratios.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from tests.testhost import guest_kernel, guest_vmlinux, make_initrd, needed  # noqa: E402
from tests.testhost.runner import L1, Direct  # noqa: E402

LKVM = os.path.join(os.path.dirname(os.path.dirname(KVMDIR)), "lkvm")
MARKER = b"lkvm-bench-init"
RAM_MIB = "256"
TIMEOUT = 120
APPEND = "console=ttyS0 quiet panic=-1"


def vmms(kernel: str, vmlinux: str, initrd: str) -> dict[str, list[str]]:
    lkvm = [LKVM, "run", "-m", RAM_MIB, "-c", "1", "-i", initrd, "-p", "quiet"]
    qemu = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", RAM_MIB,
            "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", APPEND]
    return {
        "lkvm realmode": lkvm + ["-k", kernel, "--boot-mode", "realmode"],
        "lkvm 64": lkvm + ["-k", kernel, "--boot-mode", "64"],
        "lkvm pvh": lkvm + ["-k", vmlinux, "--boot-mode", "pvh"],
        "qemu microvm": qemu + ["-M", "microvm"],
        "qemu pc": qemu + ["-M", "pc"],
    }  # fmt: skip


def time_to_marker(cmd: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        seen = b""
        while MARKER not in seen:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                raise RuntimeError(f"{cmd[0]} ended before the marker")
            seen = seen[-len(MARKER):] + chunk
            if time.monotonic() - start > TIMEOUT:
                raise RuntimeError(f"{cmd[0]}: no marker in {TIMEOUT} s")
        return time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def inner(runs: int, kernel: str, vmlinux: str, initrd: str) -> dict[str, list[float]]:
    cmds = vmms(kernel, vmlinux, initrd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):  # interleaved, so drift hits every VMM alike
        for name, cmd in cmds.items():
            times[name].append(time_to_marker(cmd))
    return times


def report(times: dict[str, list[float]]) -> None:
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"boot to init, median of {len(next(iter(times.values())))} runs:")
    for name, m in med.items():
        print(f"  {name:14s} {m:6.2f} s")
    for lk in (n for n in med if n.startswith("lkvm")):
        ratios = "  ".join(f"/{q.split()[1]} {med[lk] / med[q]:.2f}"
                           for q in med if q.startswith("qemu"))
        print(f"  {lk:14s} {ratios}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--inner", nargs=3, metavar=("KERNEL", "VMLINUX", "INITRD"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.runs, *args.inner)))
        return 0
    files = [str(guest_kernel()), str(guest_vmlinux()),
             str(make_initrd(f"echo {MARKER.decode()}\n"))]
    host = L1() if needed() else Direct()
    try:
        r = host.run([sys.executable, os.path.abspath(__file__), "-n", str(args.runs),
                      "--inner", *files], timeout=TIMEOUT * 5 * args.runs)
    finally:
        host.close()
    if r.returncode:
        sys.exit(f"boot.py: the measurement failed:\n{r.stderr}")
    report(json.loads(r.stdout.splitlines()[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
