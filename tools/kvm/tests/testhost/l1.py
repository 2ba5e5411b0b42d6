"""The L1 test host's kernel and initramfs: Debian's generic kernel (the cloud
flavour has no 9p) with kvm_amd and the 9p root, busybox as init."""

from dataclasses import dataclass
from pathlib import Path

from . import cache, debs, modules, vmlinux
from .cpio import Cpio

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
}

# The kernels L1 can boot: the suite of Debian's linux-image-amd64 they
# come from, by name ("" is the host's own suite). The first is the default.
KERNELS = {"stable": "", "backports": debs.BACKPORTS}

INIT = Path(__file__).with_name("l1init.sh")


@dataclass(frozen=True)
class L1Assets:
    kernel: Path
    initrd: Path


def _vmlinux(pkgdir: Path) -> Path:
    (bzimage,) = (pkgdir / "boot").glob("vmlinuz-*")
    dest = cache.root() / "l1" / f"vmlinux-{pkgdir.name}"
    return cache.build(
        dest, lambda tmp: tmp.write_bytes(vmlinux.extract(bzimage.read_bytes()))
    )


def _initrd(kernel_dir: Path, busybox_dir: Path, kvm_amd: str) -> Path:
    init = INIT.read_bytes()
    params = MODULES | {"kvm_amd": kvm_amd}
    mods = modules.load_order(kernel_dir / "lib" / "modules", list(params))
    listing = "".join(
        f"{modules.file_name(p)} {params.get(p.name.split('.')[0].replace('-', '_'), '')}\n"
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


def prepare(kernel: str = "stable", kvm_amd: str = "nested=1 npt=1") -> L1Assets:
    """Download, unpack and build what L1 boots (`kernel` is one of KERNELS,
    `kvm_amd` that module's parameters); cheap when cached."""
    with cache.locked():
        kernel_dir = debs.unpacked("linux-image-amd64", KERNELS[kernel])
        busybox_dir = debs.unpacked("busybox-static")
        return L1Assets(_vmlinux(kernel_dir), _initrd(kernel_dir, busybox_dir, kvm_amd))
