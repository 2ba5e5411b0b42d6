"""The QEMU an L1 runs in: the host's installed one, or the same package
from a Debian suite beside the host's, unpacked into the cache with the
firmware and data of that suite (found through -L).  The installed one is
needed either way: its package brought the libraries both link against."""

import shutil

from . import cache, debs
from .cache import TestHostError

# Where an L1's QEMU comes from, by name; "" is the host's installed one.
SOURCES = {"stable": "", "backports": debs.BACKPORTS}
# What a QEMU package from another suite needs of that suite beside it,
# and where its firmware and data then are.
COMPANIONS = {"qemu-system-x86": ("qemu-system-common", "qemu-system-data", "seabios")}
DATA_DIRS = ("usr/share/qemu", "usr/share/seabios")


def command(binary: str, package: str, source: str) -> list[str]:
    """How to start `binary`, of `package`, from `source` (of SOURCES)."""
    if shutil.which(binary) is None:
        raise TestHostError(f"{binary} not found: install {package}")
    suite = SOURCES[source]
    if not suite:
        return [binary]
    if package not in COMPANIONS:
        raise TestHostError(f"no {source} QEMU for this test host: only {', '.join(COMPANIONS)}")
    arch = debs.host_arch()
    with cache.locked():
        pkgs = [debs.resolve(name, arch, suite) for name in (package, *COMPANIONS[package])]
        key = cache.digest(*(f"{p}={v}" for p, v in pkgs))
        root = cache.build(cache.root() / "l1" / f"qemu-{source}-{key}",
                           lambda tmp: debs.install(pkgs, arch, tmp, suite))
    data = (arg for path in DATA_DIRS for arg in ("-L", str(root / path)))
    return [str(root / "usr" / "bin" / binary), *data]
