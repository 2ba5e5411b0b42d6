"""The L1 test host's kernel and initramfs: Debian's generic kernel (the cloud
flavour has no 9p) with kvm_amd and the 9p root, busybox as init."""

from dataclasses import dataclass
from pathlib import Path

from . import cache, debs, vmlinux
from .cpio import Cpio
from .modules import load_order

# Load order comes from the modules' own dependencies; these are the roots.
MODULES = {
    "virtio_pci": "",
    "9pnet_virtio": "",
    "9p": "",
    "overlay": "",
    "kvm_amd": "nested=1 npt=1",
    # Host-side backends lkvm can use, missing on the PVM host itself.
    "tun": "",
    "vhost_net": "",
    "vhost_vsock": "",
}

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


def _initrd(kernel_dir: Path, busybox_dir: Path) -> Path:
    init = INIT.read_bytes()
    mods = load_order(kernel_dir / "lib" / "modules", list(MODULES))
    listing = "".join(
        f"{p.name} {MODULES.get(p.stem.replace('-', '_'), '')}\n" for p in mods
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
            a.file(f"lib/modules/{p.name}", p.read_bytes())
        a.write(tmp)

    return cache.build(cache.root() / "l1" / f"initrd-{key}.cpio", make)


def prepare() -> L1Assets:
    """Download, unpack and build what L1 boots; cheap when cached."""
    with cache.locked():
        kernel_dir = debs.unpacked("linux-image-amd64")
        busybox_dir = debs.unpacked("busybox-static")
        return L1Assets(_vmlinux(kernel_dir), _initrd(kernel_dir, busybox_dir))
