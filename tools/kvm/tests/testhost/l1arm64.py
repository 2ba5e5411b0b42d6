"""The arm64 L1 test host's kernel, initramfs and root, for QEMU's TCG on any
machine: Debian's arm64 kernel (KVM built in, entered at EL2), the same
busybox init as x86's L1, and a root that arm64 code can run.

The x86 host's / is no use to arm64 code, so L1's root is a tree in the cache
made from arm64 packages (Python and what it needs to run, busybox for the
shell and tools), shared read-only over 9p. lkvm's checkout is shared beside
it at its own path, with what lkvm builds cross-compiled for arm64 laid over
it: the bindings (their file name carries the architecture, so they sit
beside the x86 ones the checkout has) and the guest init (in place of x86's,
at the path lkvm copies it from into a rootfs); and so is the test host's
cache, where the L2 guests' kernel and initramfs are.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from . import cache, debs
from .cache import TestHostError
from .l1 import L1Assets, initrd

if TYPE_CHECKING:
    from .hosts import HostConfig

ARCH = "arm64"

# Everything virt's devices need is a module in Debian's arm64 kernel. Each
# costs a few tenths of a second of TCG, so only what the root needs: the
# host-side backends x86's L1 loads for lkvm (tun, vhost) come with the tests
# that use them.
MODULES = {
    "virtio_pci": "",
    "virtio_console": "",  # the control port
    "9pnet_virtio": "",
    "9p": "",
    "overlay": "",
}

# L1's userspace: python3 with the cffi backend lkvm's bindings load, libfdt
# for the device trees lkvm writes, and busybox for /bin/sh and the usual tools.
ROOT_PACKAGES = ("python3", "python3-cffi-backend", "python3-libfdt", "busybox-static")
# ... and beside it, only for the benchmark, QEMU (about 32 MB to download,
# 150 MB unpacked; 87 packages more than the root's).
QEMU_PACKAGES = ("qemu-system-arm",)

# What cross-compiling the bindings takes: the uapi headers of the same
# kernel release as the host's (the cross toolchain's own are older), and
# arm64's Python headers.
UAPI_BUILD = Path(__file__).resolve().parents[2] / "include" / "uapi_build.py"
CHECKOUT = UAPI_BUILD.parents[3]
# The guest init, static as the Makefile builds x86's: it runs before the
# rootfs's links into the host's files lead anywhere.
GUEST_INIT = CHECKOUT / "tools" / "kvm" / "guest" / "init"
INIT_FLAGS = ("-static", "-Os", "-Wall", "-Wextra")


@dataclass(frozen=True)
class Cross:
    """Another architecture's L1 root and builds, by its names: Debian's,
    the machine's (uname -m, uapi_build.py --arch) and its multiarch
    triplet, which names its cross compiler and include directory."""

    arch: str
    machine: str
    triplet: str

    @property
    def cc(self) -> str:
        return f"{self.triplet}-gcc"


ARM64 = Cross(ARCH, "aarch64", "aarch64-linux-gnu")


def _applets() -> list[str]:
    """Busybox's applets as paths (bin/sh, usr/bin/env ...), from the host
    architecture's busybox-static, which is built from the same
    configuration as arm64's and can run here."""
    busybox = debs.unpacked("busybox-static") / "bin" / "busybox"
    done = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.split()


def _compile_python(tmp: Path) -> None:
    """Bytecode for the root's Python modules, which Debian's maintainer
    scripts would have made: without it every python3 start in L1 compiles
    the standard library modules it imports (4 of the 14 s a tiny guest's
    `lkvm run` took there). The host's Python writes it, with the paths L1
    sees; it is the root's version wherever the bindings build (_builds()
    needs 3.11), and another version's bytecode would only go unused."""
    for lib in sorted((tmp / "usr" / "lib").glob("python3*")):
        # A few files Debian never compiles either (2to3's test data) fail;
        # they stay source, as they are there.
        compileall.compile_dir(lib, quiet=2, workers=0, stripdir=str(tmp), prependdir="/")


def _root(arch: str = ARCH) -> Path:
    """The arm64 root tree, with busybox's applets linked where no package
    put a file of the same name (which applets there are follows from
    busybox's version, part of the key), and its Python modules compiled."""
    pkgs = debs.closure(ROOT_PACKAGES, arch)

    def make(tmp: Path) -> None:
        debs.install(pkgs, arch, tmp)
        for applet in _applets():
            link = tmp / applet
            if not link.exists() and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        _compile_python(tmp)

    key = cache.digest(*(f"{p}={v}" for p, v in pkgs), f"pyc-{sys.version_info[:2]}")
    return cache.build(cache.root() / "l1" / f"root-{arch}-{key}", make)


def _cross(what: str, command: list[str], arch: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise TestHostError(f"building {what} for {arch} failed:\n{done.stderr.strip()}")


def _builds(cross: Cross = ARM64) -> Path:
    """A directory shaped like the checkout holding only its builds for
    `cross`: the bindings and the guest init."""
    arch, cc = cross.arch, cross.cc
    headers = debs.unpacked("linux-libc-dev", arch) / "usr" / "include"
    python = debs.unpacked("libpython3.11-dev", arch) / "usr" / "include"
    init_c = GUEST_INIT.with_suffix(".c")
    key = cache.digest(
        UAPI_BUILD.read_bytes(), version("cffi"), headers.parents[1].name, python.parents[1].name,
        init_c.read_bytes(), *INIT_FLAGS,
    )
    include = UAPI_BUILD.parent.relative_to(CHECKOUT)

    def make(tmp: Path) -> None:
        if shutil.which(cc) is None:
            raise TestHostError(f"{cc} not found: run make (Debian's gcc-{cross.triplet})")
        # The module's name carries the building Python's version, which
        # must be the one the other architecture's python3 runs.
        if sys.version_info[:2] != (3, 11):
            raise TestHostError(f"the {arch} host's Python is 3.11: build its bindings with 3.11")
        _cross("the bindings", [
            sys.executable, str(UAPI_BUILD), str(tmp / include), "--arch", cross.machine,
            "--cc", cc, "-I", str(headers / cross.triplet), "-I", str(headers),
            "--python-include", str(python / "python3.11"), "--python-include", str(python),
        ], arch)  # fmt: skip
        init = tmp / GUEST_INIT.relative_to(CHECKOUT)
        init.parent.mkdir(parents=True)
        _cross("the guest init", [cc, *INIT_FLAGS, "-o", str(init), str(init_c)], arch)

    return cache.build(cache.root() / "l1" / f"builds-{arch}-{key}", make)


def qemu(arch: str = ARCH, packages: tuple[str, ...] = QEMU_PACKAGES) -> Path:
    """QEMU for `arch`, the boot benchmark's baseline in its host: the
    `packages` it needs beyond the root's, unpacked into the cache, which
    L1 sees at the same path. Run its usr/bin binaries with
    LD_LIBRARY_PATH at its library directories."""
    with cache.locked():
        root = {p for p, _ in debs.closure(ROOT_PACKAGES, arch)}
        pkgs = [(p, v) for p, v in debs.closure(packages, arch) if p not in root]
        key = cache.digest(*(f"{p}={v}" for p, v in pkgs))
        return cache.build(cache.root() / "l1" / f"qemu-{arch}-{key}",
                           lambda tmp: debs.install(pkgs, arch, tmp))


def prepare(config: HostConfig) -> L1Assets:
    """Download, unpack and build what the arm64 L1 boots; cheap when cached.
    Of `config`, only what any L1 has (CPUs, memory, TCG) applies here."""
    with cache.locked():
        kernel_dir = debs.unpacked("linux-image-arm64", ARCH)
        busybox_dir = debs.unpacked("busybox-static", ARCH)
        (image,) = (kernel_dir / "boot").glob("vmlinuz-*")  # a raw Image
        return L1Assets(
            image,
            initrd(kernel_dir, busybox_dir, MODULES),
            {"hostfs": _root(), "lkvm": CHECKOUT, "arch": _builds(), "cache": cache.root()},
            (f"testhost_lkvm={CHECKOUT}", f"testhost_cache={cache.root()}"),
        )
