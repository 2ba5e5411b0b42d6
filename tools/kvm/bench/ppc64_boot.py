#!/usr/bin/env python3
"""Boot to init of Debian's ppc64el kernel with two vCPUs: lkvm against
QEMU (-M pseries -accel kvm), same kernel, same initrd, same run, in the
ppc64 test host (nested KVM-HV under QEMU's TCG); then one lkvm boot with
--debug-exits, for the hypercalls it handled and what each cost it.

    ppc64_boot.py [-n RUNS]

QEMU is Debian's ppc64el qemu-system-ppc with the libraries it needs
beyond the test host's root, unpacked into the test host's cache; VOF for
its firmware, as the test host itself boots.  The spectre capabilities
QEMU asks of KVM by default are ones nested KVM-HV cannot give, so they
are turned down.  Times are the test host's clock.
"""

import argparse
import json
import os
import sys

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from arm64_boot import exit_stats  # noqa: E402
from boot import MARKER, report, time_to_marker  # noqa: E402

from tests.testhost import make_initrd, ppc64_guest_kernel  # noqa: E402
from tests.testhost.l1ppc64 import qemu  # noqa: E402
from tests.testhost.runner import run_bench  # noqa: E402

LKVM = os.path.join(KVMDIR, "lkvm.py")
RAM_MIB, CPUS = "512", "2"
TIMEOUT = 300
QEMU_LIBS = ("usr/lib/powerpc64le-linux-gnu", "lib/powerpc64le-linux-gnu")
PSERIES = ("pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,"
           "cap-ccf-assist=off")


def vmms(kernel: str, initrd: str, qemu_dir: str) -> dict[str, list[str]]:
    lkvm = [sys.executable, LKVM, "run", "-k", kernel, "-i", initrd, "-m", RAM_MIB,
            "-c", CPUS, "--console", "hv", "-p", "quiet"]
    qemu = [os.path.join(qemu_dir, "usr/bin/qemu-system-ppc64"),
            "-L", os.path.join(qemu_dir, "usr/share/qemu"),
            "-M", PSERIES, "-accel", "kvm", "-cpu", "host", "-m", RAM_MIB,
            "-smp", CPUS, "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=hvc0 quiet panic=-1"]
    return {"lkvm": lkvm, "qemu pseries": qemu}


def inner(runs: int, kernel: str, initrd: str, qemu_dir: str) -> dict:
    cmds = vmms(kernel, initrd, qemu_dir)
    libs = ":".join(os.path.join(qemu_dir, d) for d in QEMU_LIBS)
    times: dict[str, list[float | None]] = {name: [] for name in cmds}
    for _ in range(runs):   # interleaved, so drift hits both alike
        for name, cmd in cmds.items():
            try:
                times[name].append(time_to_marker(cmd, TIMEOUT, {"LD_LIBRARY_PATH": libs}))
            except RuntimeError as e:
                print(f"ppc64_boot.py: {name}: {e}", file=sys.stderr)
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
    files = [str(ppc64_guest_kernel()),
             str(make_initrd(f"echo {MARKER.decode()}\n", modules=False, arch="ppc64el")),
             str(qemu())]
    result = run_bench(__file__, ["-n", str(args.runs), "--inner", *files],
                       timeout=TIMEOUT * 3 * (args.runs + 1), arch="ppc64el")
    report(result["times"])
    print(result["exits"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
