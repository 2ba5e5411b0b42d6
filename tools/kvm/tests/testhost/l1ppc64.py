"""The ppc64 L1 test host's kernel, initramfs and root, for QEMU's TCG on any
machine: Debian's ppc64el kernel (a vmlinux, which QEMU's pseries firmware
VOF enters directly) with kvm-hv, so that lkvm drives a nested KVM-HV; the
root is built as arm64's is (l1arm64.py), from ppc64el packages.

Debian's ppc64el kernel has no KVM-PR, and kvm-hv refuses to load unless
the machine offers nested HV (cap-nested-hv=on, hosts.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import cache, debs
from .l1 import L1Assets, initrd
from .l1arm64 import CHECKOUT, Cross, _builds, _root
from .l1arm64 import qemu as _qemu

if TYPE_CHECKING:
    from .hosts import HostConfig

PPC64 = Cross("ppc64el", "ppc64le", "powerpc64le-linux-gnu")

# pseries' devices: the console (spapr-vty, hvc_vio) and its PCI host bridge
# are built in; virtio and 9p are modules, and so is KVM-HV.
MODULES = {
    "virtio_pci": "",
    "virtio_console": "",  # the control port
    "9pnet_virtio": "",
    "9p": "",
    "overlay": "",
    "kvm_hv": "",
}


def qemu() -> Path:
    """QEMU for ppc64el (qemu-system-ppc), the boot benchmark's baseline."""
    return _qemu(PPC64.arch, ("qemu-system-ppc",))


def prepare(config: HostConfig) -> L1Assets:
    """Download, unpack and build what the ppc64 L1 boots; cheap when cached.
    Of `config`, only what any L1 has (CPUs, memory, TCG) applies here."""
    with cache.locked():
        kernel_dir = debs.unpacked("linux-image-powerpc64le", PPC64.arch)
        busybox_dir = debs.unpacked("busybox-static", PPC64.arch)
        (vmlinux,) = (kernel_dir / "boot").glob("vmlinux-*")
        return L1Assets(
            vmlinux,
            initrd(kernel_dir, busybox_dir, MODULES),
            {"hostfs": _root(PPC64.arch), "lkvm": CHECKOUT, "arch": _builds(PPC64),
             "cache": cache.root()},
            (f"testhost_lkvm={CHECKOUT}", f"testhost_cache={cache.root()}"),
        )
