"""The L1 test host's kernel and initramfs: Debian's generic kernel (the cloud
flavour has no 9p) with kvm_amd and the 9p root, busybox as init. The initramfs
builder is shared with the other architectures' L1 (l1arm64.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import cache, debs, modules, vmlinux
from .cpio import Cpio

if TYPE_CHECKING:
    from .hosts import HostConfig

# Load order comes from the modules' own dependencies; these are the roots,
# with their parameters (kvm_amd's are HostConfig.kvm_amd).
MODULES = {
    "virtio_pci": "",
    "9pnet_virtio": "",
    "9p": "",
    "overlay": "",
    "kvm_amd": "",
    # Host-side backends lkvm can use, missing on the PVM host itself.
    "tun": "",
    "vhost_net": "",
    "vhost_vsock": "",
    # vhost-scsi and a LIO file backstore for it, set up through configfs.
    "vhost_scsi": "",
    "target_core_file": "",
    "configfs": "",
}

# The kernels L1 can boot: the suite of Debian's linux-image-amd64 they
# come from, by name ("" is the host's own suite).
KERNELS = {"stable": "", "backports": debs.BACKPORTS}

INIT = Path(__file__).with_name("l1init.sh")


@dataclass(frozen=True)
class L1Assets:
    """What an L1 boots: its kernel and initramfs, the read-only 9p exports
    its init mounts (mount tag -> host directory; "hostfs" is L1's root) and
    the kernel command-line words that tell its init what differs."""

    kernel: Path
    initrd: Path
    shares: dict[str, Path]
    params: tuple[str, ...] = ()


def _vmlinux(pkgdir: Path) -> Path:
    (bzimage,) = (pkgdir / "boot").glob("vmlinuz-*")
    dest = cache.root() / "l1" / f"vmlinux-{pkgdir.name}"
    return cache.build(
        dest, lambda tmp: tmp.write_bytes(vmlinux.extract(bzimage.read_bytes()))
    )


def initrd(kernel_dir: Path, busybox_dir: Path, wanted: dict[str, str]) -> Path:
    """L1's initramfs: l1init.sh as /init, busybox, and the `wanted` modules
    (name -> parameters) with what they depend on, from the unpacked kernel
    package."""
    init = INIT.read_bytes()
    mods = modules.load_order(kernel_dir / "lib" / "modules", list(wanted))
    listing = "".join(
        f"{modules.file_name(p)} {wanted.get(p.name.split('.')[0].replace('-', '_'), '')}\n"
        for p in mods
    )
    key = cache.digest(init, listing, kernel_dir.name, busybox_dir.name)

    def make(tmp: Path) -> None:
        a = Cpio()
        for d in ("proc", "sys", "dev", "lower", "rw", "newroot"):
            a.dir(d)
        a.file("bin/busybox", (busybox_dir / "bin" / "busybox").read_bytes(), 0o755)
        a.symlink("bin/sh", "busybox")
        a.file("init", init, 0o755)
        a.file("etc/modules", listing.encode())
        for p in mods:
            a.file(f"lib/modules/{modules.file_name(p)}", modules.read(p))
        a.write(tmp)

    return cache.build(cache.root() / "l1" / f"initrd-{key}.cpio", make)


def prepare(config: HostConfig) -> L1Assets:
    """Download, unpack and build what L1 boots (its kernel and kvm_amd's
    parameters from `config`); cheap when cached. Its root is the host's
    own /, so it sees the caller's paths."""
    with cache.locked():
        kernel_dir = debs.unpacked("linux-image-amd64", suite=KERNELS[config.kernel])
        busybox_dir = debs.unpacked("busybox-static")
        wanted = MODULES | {"kvm_amd": config.kvm_amd}
        return L1Assets(
            _vmlinux(kernel_dir), initrd(kernel_dir, busybox_dir, wanted), {"hostfs": Path("/")}
        )
