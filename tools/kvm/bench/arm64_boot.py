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

import os
import sys

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _foreign_boot import ForeignBoot, main  # noqa: E402

from tests.testhost import arm64_guest_kernel  # noqa: E402
from tests.testhost.l1arm64 import qemu  # noqa: E402

LKVM = os.path.join(KVMDIR, "lkvm.py")
RAM_MIB, CPUS = "256", "2"
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


BOOT = ForeignBoot("arm64", arm64_guest_kernel, qemu, QEMU_LIBS, vmms)

if __name__ == "__main__":
    sys.exit(main(BOOT, __file__))
