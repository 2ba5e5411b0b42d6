"""The L2 test guests' kernels (Debian's cloud flavour, and the one `make
guest-kernel` builds) and their initramfs."""

from pathlib import Path

from . import cache, debs, vmlinux
from . import modules as kmod
from .cpio import Cpio

# The cloud kernel builds these virtio drivers as modules; dependencies follow.
MODULES = [
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console",
    "virtio_rng", "virtio_balloon", "vmw_vsock_virtio_transport",
]  # fmt: skip

INIT = Path(__file__).with_name("l2init.sh")


# The L2 kernel of each architecture (Debian's names): amd64's cloud flavour;
# arm64's only flavour, the L1's own Image, with KVM and virtio built in.
# ppc64el's, too: the L1's own vmlinux, which boots as an sPAPR guest.
KERNELS = {"amd64": "linux-image-cloud-amd64", "arm64": "linux-image-arm64",
           "ppc64el": "linux-image-powerpc64le"}


def _packages(arch: str = "amd64") -> tuple[Path, Path]:
    with cache.locked():
        kernel = debs.unpacked(KERNELS[arch], arch)
        busybox = debs.unpacked("busybox-static", arch)
    return kernel, busybox


def guest_kernel() -> Path:
    """The cloud kernel's bzImage, unpacked into the cache."""
    (bzimage,) = (_packages()[0] / "boot").glob("vmlinuz-*")
    return bzimage


def backports_guest_kernel() -> Path:
    """bookworm-backports' cloud kernel's bzImage (6.12), unpacked: lkvm
    is lock-stepped to no kernel, so the tier boots the newer one too."""
    with cache.locked():
        kernel = debs.unpacked(KERNELS["amd64"], suite=debs.BACKPORTS)
    (bzimage,) = (kernel / "boot").glob("vmlinuz-*")
    return bzimage


def arm64_guest_kernel() -> Path:
    """Debian's arm64 Image (its vmlinuz is a raw Image), unpacked."""
    (image,) = (_packages("arm64")[0] / "boot").glob("vmlinuz-*")
    return image


def ppc64_guest_kernel() -> Path:
    """Debian's ppc64el vmlinux, unpacked."""
    (vmlinux,) = (_packages("ppc64el")[0] / "boot").glob("vmlinux-*")
    return vmlinux


def guest_vmlinux() -> Path:
    """The cloud kernel's uncompressed vmlinux (for PVH boots), cached."""
    bzimage = guest_kernel()
    return cache.build(
        cache.root() / "l2" / f"vmlinux-{bzimage.name}",
        lambda tmp: tmp.write_bytes(vmlinux.extract(bzimage.read_bytes())),
    )


def kvmconfig_kernel() -> Path | None:
    """The newest bzImage `make guest-kernel` built, if any: virtio (with
    virtio-mmio devices named on the command line, which the cloud kernel
    cannot take) and 9p built in."""
    found = (cache.root().parent / "kernel").glob("*/bzImage")
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def make_initrd(script: str, extra_files: dict[str, bytes | str] | None = None,
                modules: bool = True, arch: str = "amd64",
                extra_modules: tuple[str, ...] = ()) -> Path:
    """An initramfs whose init loads the kernel's virtio modules and
    `extra_modules` (unless `modules` is false: a kernel with them built
    in), runs `script` with busybox sh, prints "testhost-l2: exit <status>"
    and reboots; its busybox and modules are `arch`'s.

    `extra_files` maps paths in the guest (relative to /) to contents. The
    result is cached under a digest of everything that goes in.
    """
    kernel_dir, busybox_dir = _packages(arch)
    extra = {
        k.lstrip("/"): v.encode() if isinstance(v, str) else v
        for k, v in (extra_files or {}).items()
    }
    wanted = [*MODULES, *extra_modules]
    mods = kmod.load_order(kernel_dir / "lib" / "modules", wanted) if modules else []
    listing = "".join(f"{kmod.file_name(p)}\n" for p in mods)
    init = INIT.read_bytes()
    parts = [init, script, listing, kernel_dir.name, busybox_dir.name]
    parts += [x for name in sorted(extra) for x in (name, extra[name])]

    def make(tmp: Path) -> None:
        a = Cpio()
        for d in ("proc", "sys", "dev", "tmp"):
            a.dir(d)
        a.file("bin/busybox", (busybox_dir / "bin" / "busybox").read_bytes(), 0o755)
        a.symlink("bin/sh", "busybox")
        a.file("init", init, 0o755)
        a.file("test.sh", script.encode(), 0o755)
        a.file("etc/modules", listing.encode())
        for p in mods:
            a.file(f"lib/modules/{kmod.file_name(p)}", kmod.read(p))
        for name in sorted(extra):
            a.file(name, extra[name], 0o755)
        a.write(tmp)

    return cache.build(
        cache.root() / "l2" / f"initrd-{cache.digest(*parts)}.cpio", make
    )
