"""The test host's image builders, on small inputs made here (no cache, no KVM)."""

import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from tests.testhost import cpio, modules, vmlinux


def test_cpio_newc_layout(tmp_path: Path) -> None:
    a = cpio.Cpio()
    a.file("bin/tool", b"abc", 0o755)
    a.symlink("bin/sh", "tool")
    out = tmp_path / "x.cpio"
    a.write(out)
    data = out.read_bytes()
    names = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        names.append((name, oct(mode)))
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + -size % 4
        if name == "TRAILER!!!":
            break
        if name == "bin/tool":
            assert body == b"abc"
    assert pos == len(data)
    assert names == [
        ("bin", "0o40755"),
        ("bin/tool", "0o100755"),
        ("bin/sh", "0o120777"),
        ("TRAILER!!!", "0o0"),
    ]


def _bzimage(payload: bytes) -> bytes:
    setup_sects = 1
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)
    struct.pack_into("<II", head, 0x248, 0, len(payload))
    return bytes(head) + payload


def test_vmlinux_extract_xz_with_size_trailer() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 16
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ) + struct.pack("<I", len(elf))
    assert vmlinux.extract(_bzimage(payload)) == elf


def test_vmlinux_extract_lz4_legacy_with_size_trailer() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 16
    packed = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True)
    payload = packed.stdout + struct.pack("<I", len(elf))
    assert vmlinux.extract(_bzimage(payload)) == elf


def test_vmlinux_rejects_unknown_compression() -> None:
    with pytest.raises(ValueError, match="compression"):
        vmlinux.extract(_bzimage(b"BZh91AY&SY" + bytes(60)))


def _module(path: Path, modinfo: str) -> None:
    """A minimal ELF64 file with .shstrtab and .modinfo sections."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    info = modinfo.replace(";", "\0").encode() + b"\0"
    body = shstr + info
    shoff = 64 + len(body)
    ehdr = bytearray(64)
    ehdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", ehdr, 0x28, shoff)
    struct.pack_into("<HHH", ehdr, 0x3A, 64, 3, 1)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQ", 1, 3, 0, 0, 64, len(shstr)).ljust(64, b"\0")
    sections += struct.pack("<IIQQQQ", 11, 1, 0, 0, 64 + len(shstr), len(info))
    path.write_bytes(bytes(ehdr) + body + sections.ljust(3 * 64, b"\0"))


def test_modules_in_dependency_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _module(tmp_path / "kvm-amd.ko", "name=kvm_amd;depends=kvm,ccp")
    _module(tmp_path / "sub" / "kvm.ko", "name=kvm;depends=irqbypass")
    _module(tmp_path / "irqbypass.ko", "name=irqbypass;depends=")
    _module(tmp_path / "ccp.ko", "depends=")
    order = modules.load_order(tmp_path, ["kvm_amd", "kvm"])
    assert [p.name for p in order] == ["irqbypass.ko", "kvm.ko", "ccp.ko", "kvm-amd.ko"]


def test_modules_missing_dependency(tmp_path: Path) -> None:
    _module(tmp_path / "a.ko", "depends=b")
    with pytest.raises(FileNotFoundError, match="module b"):
        modules.load_order(tmp_path, ["a"])
