"""The e2e test host: real KVM for real Linux guests, nested in QEMU when needed.

Where the local KVM runs guest CPL0 code natively, e2e tests run directly;
where it doesn't (nested PVM), they run inside an L1 QEMU TCG guest with
emulated SVM and Debian's kernel with kvm_amd (see DESIGN.md §1). An arm64
L1 (Debian's arm64 kernel at EL2, KVM built in) gives arm64 KVM on any
machine; hosts.py has what differs between them.
"""

from . import l1
from .cache import TestHostError
from .hosts import HostConfig
from .l2 import (
    arm64_guest_kernel,
    backports_guest_kernel,
    guest_kernel,
    guest_vmlinux,
    kvmconfig_kernel,
    make_initrd,
    ppc64_guest_kernel,
)
from .probe import needed
from .session import L1Died, L1Error, Result, Session, run


def prepare() -> None:
    """Fill the cache with everything L1 and the L2 guests need."""
    l1.prepare()
    guest_kernel()
    backports_guest_kernel()


__all__ = [
    "HostConfig", "L1Died", "L1Error", "Result", "Session", "TestHostError",
    "arm64_guest_kernel", "backports_guest_kernel", "guest_kernel", "guest_vmlinux",
    "kvmconfig_kernel", "make_initrd", "needed", "ppc64_guest_kernel", "prepare", "run",
]  # fmt: skip
