#!/usr/bin/env python3
"""Boot to init of Debian's arm64 kernel with two vCPUs: lkvm against QEMU
(-M virt -accel kvm), same kernel, same initrd, same run, in the arm64
test host (or directly on an arm64 machine with KVM); then one lkvm boot
with --debug-exits, for the exits it handled and what each cost it.

    arm64_boot.py [-n RUNS]

QEMU is Debian's arm64 qemu-system-arm with the libraries it needs beyond
the test host's root, unpacked into the test host's cache. Times are the
host's clock (the guest's disagrees in the emulated host).
"""

import argparse
import json
import os
import subprocess
import sys

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from boot import MARKER, report, time_to_marker  # noqa: E402

from tests.testhost import arm64_guest_kernel, make_initrd  # noqa: E402
from tests.testhost.l1arm64 import qemu  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

LKVM = os.path.join(KVMDIR, "lkvm.py")
RAM_MIB, CPUS = "256", "2"
TIMEOUT = 300   # a boot takes tens of seconds in the emulated host
QEMU_LIBS = ("usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu")


def vmms(kernel: str, initrd: str, qemu_dir: str) -> dict[str, list[str]]:
    lkvm = [sys.executable, LKVM, "run", "-k", kernel, "-i", initrd, "-m", RAM_MIB,
            "-c", CPUS, "-p", "quiet"]
    qemu = [os.path.join(qemu_dir, "usr/bin/qemu-system-aarch64"),
            "-L", os.path.join(qemu_dir, "usr/share/qemu"),
            "-M", "virt,gic-version=3", "-accel", "kvm", "-cpu", "host", "-m", RAM_MIB,
            "-smp", CPUS, "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyAMA0 quiet panic=-1"]
    return {"lkvm": lkvm, "qemu virt": qemu}


def exit_stats(cmd: list[str]) -> str:
    """lkvm's --debug-exits table of one whole boot (the guest reboots
    after its marker, which ends lkvm)."""
    done = subprocess.run([*cmd, "--debug-exits"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return done.stderr[done.stderr.find("  Exits handled"):]


def inner(runs: int, kernel: str, initrd: str, qemu_dir: str) -> dict:
    cmds = vmms(kernel, initrd, qemu_dir)
    libs = ":".join(os.path.join(qemu_dir, d) for d in QEMU_LIBS)
    times: dict[str, list[float | None]] = {name: [] for name in cmds}
    for _ in range(runs):   # interleaved, so drift hits both alike
        for name, cmd in cmds.items():
            try:
                times[name].append(time_to_marker(cmd, TIMEOUT, {"LD_LIBRARY_PATH": libs}))
            except RuntimeError as e:
                print(f"arm64_boot.py: {name}: {e}", file=sys.stderr)
                times[name].append(None)
    return {"times": times, "exits": exit_stats(cmds["lkvm"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=3)
    ap.add_argument("--inner", nargs=3, metavar=("KERNEL", "INITRD", "QEMU"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.runs, *args.inner)))
        return 0
    files = [str(arm64_guest_kernel()),
             str(make_initrd(f"echo {MARKER.decode()}\n", modules=False, arch="arm64")),
             str(qemu())]
    result = run_bench(__file__, ["-n", str(args.runs), "--inner", *files],
                       timeout=TIMEOUT * 3 * (args.runs + 1), arch="arm64")
    report(result["times"])
    print(result["exits"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
