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
import select
import signal
import statistics
import subprocess
import sys
import time

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from tests.testhost import guest_kernel, guest_vmlinux, make_initrd  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

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


def time_to_marker(cmd: list[str], timeout: float = TIMEOUT,
                   env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ | (env or {}))
    try:
        seen = b""
        while MARKER not in seen:
            left = start + timeout - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise RuntimeError(f"{cmd[0]}: no marker in {timeout} s")
            chunk = proc.stdout.read1(4096)
            if not chunk:
                raise RuntimeError(f"{cmd[0]} ended before the marker")
            seen = seen[-len(MARKER):] + chunk
        return time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def inner(runs: int, kernel: str, vmlinux: str, initrd: str) -> dict[str, list[float | None]]:
    """Times per VMM; None for a boot that never reached init (reported,
    not fatal: one stuck boot should not lose the others)."""
    cmds = vmms(kernel, vmlinux, initrd)
    times: dict[str, list[float | None]] = {name: [] for name in cmds}
    for _ in range(runs):  # interleaved, so drift hits every VMM alike
        for name, cmd in cmds.items():
            try:
                times[name].append(time_to_marker(cmd))
            except RuntimeError as e:
                print(f"boot.py: {name}: {e}", file=sys.stderr)
                times[name].append(None)
    return times


def report(times: dict[str, list[float | None]]) -> None:
    ok = {name: [x for x in t if x is not None] for name, t in times.items()}
    med = {name: statistics.median(t) for name, t in ok.items() if t}
    print(f"boot to init, median of {len(next(iter(times.values())))} runs:")
    for name, t in times.items():
        failed = f"  ({t.count(None)} did not reach init)" if None in t else ""
        print(f"  {name:14s} {med[name]:6.2f} s{failed}" if name in med
              else f"  {name:14s}  none reached init")
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
    report(run_bench(__file__, ["-n", str(args.runs), "--inner", *files],
                   timeout=TIMEOUT * 5 * args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
