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

import os
import sys

KVMDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, KVMDIR)

from _foreign_boot import ForeignBoot, main  # noqa: E402

from tests.testhost import ppc64_guest_kernel  # noqa: E402
from tests.testhost.l1ppc64 import qemu  # noqa: E402

LKVM = os.path.join(KVMDIR, "lkvm.py")
RAM_MIB, CPUS = "512", "2"
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


BOOT = ForeignBoot("ppc64el", ppc64_guest_kernel, qemu, QEMU_LIBS, vmms)

if __name__ == "__main__":
    sys.exit(main(BOOT, __file__))
