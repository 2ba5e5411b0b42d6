"""Kernel modules of an unpacked Debian kernel package, in load order.

The package ships no modules.dep (depmod writes it at install time), so the
dependencies come from each module's own `.modinfo` section. Newer kernels
ship modules xz-compressed (`.ko.xz`); read() gives the ELF either way.
"""

import lzma
import struct
from pathlib import Path

SUFFIXES = (".ko", ".ko.xz")


def read(path: Path) -> bytes:
    """A module's ELF image, decompressed if it is shipped compressed."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def file_name(path: Path) -> str:
    """The file name a module is loaded from: always the uncompressed one."""
    return path.name.removesuffix(".xz")


def _modinfo(path: Path) -> dict[str, str]:
    """The key=value strings of an ELF64 module's .modinfo section."""
    data = read(path)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not an ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        if data[stroff + name : data.index(b"\0", stroff + name)] == b".modinfo":
            fields = (
                f.decode() for f in data[off : off + size].split(b"\0") if b"=" in f
            )
            return dict(f.split("=", 1) for f in fields)
    raise ValueError(f"{path}: no .modinfo section")


def _canon(name: str) -> str:
    # Module names treat '-' and '_' alike (kvm-amd.ko registers as kvm_amd).
    return name.replace("-", "_")


def _builtin(moddir: Path) -> set[str]:
    """Modules built into the kernel (modules.builtin lists their paths):
    another kernel's configuration may build in what one loads."""
    return {
        _canon(Path(line).name.removesuffix(".ko"))
        for listing in moddir.glob("*/modules.builtin")
        for line in listing.read_text().split()
    }


def load_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """Paths of `wanted` modules and everything they depend on, dependencies
    first; those built into the kernel are left out."""
    index = {
        _canon(file_name(p).removesuffix(".ko")): p
        for suffix in SUFFIXES
        for p in moddir.rglob(f"*{suffix}")
    }
    order: list[Path] = []
    seen: set[str] = _builtin(moddir)

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise FileNotFoundError(f"module {name} not found under {moddir}")
        deps = _modinfo(index[name]).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(_canon(dep))
        order.append(index[name])

    for name in wanted:
        visit(_canon(name))
    return order
