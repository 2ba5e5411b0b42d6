"""Kernel images lkvm refuses: one clear line and a non-zero exit, before
any guest code runs (so these run on any /dev/kvm)."""

import struct

import pytest

from tests.helpers import run_lkvm

pytestmark = pytest.mark.usefixtures("kvm_available")

EM_AARCH64 = 183


def _bzimage(version: int, syssize: int = 0x100, payload: int = 0x1000) -> bytes:
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512 + payload)
    image[0x1F1] = setup_sects
    image[0x201] = 0x6A  # the setup header's length, past the jump
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<I", image, 0x1F4, syssize)
    image[0x211] = 1  # LOADED_HIGH
    struct.pack_into("<I", image, 0x238, 255)  # cmdline_size
    struct.pack_into("<I", image, 0x22C, 0x37FFFFFF)  # initrd_addr_max
    return bytes(image)


def _fatal(tmp_path, image: bytes, *args: str) -> str:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(image)
    r = run_lkvm("run", "-k", str(kernel), *args)
    err = r.stderr.decode()
    fatal = [line for line in err.splitlines() if "Fatal:" in line]
    assert r.returncode != 0 and len(fatal) == 1, err
    assert "Traceback" not in err
    return fatal[0]


def test_elf_for_another_machine(tmp_path) -> None:
    ehdr = bytearray(64)
    ehdr[:4] = b"\x7fELF"
    ehdr[4] = 2  # ELFCLASS64
    struct.pack_into("<H", ehdr, 18, EM_AARCH64)
    assert "not an x86-64 kernel" in _fatal(tmp_path, bytes(ehdr))


def test_arm64_image_on_x86(tmp_path) -> None:
    """Without its own check the flat binary loader took it, and the
    guest ran an arm64 kernel as x86 code."""
    image = bytearray(0x1000)
    struct.pack_into("<QQ", image, 8, 0, len(image))  # text_offset, image_size
    image[0x38:0x3C] = b"ARM\x64"
    assert "the kernel is an arm64 Image" in _fatal(tmp_path, bytes(image), "-m", "16")


def test_x86_64_elf_without_pvh_note(tmp_path) -> None:
    with open("/bin/true", "rb") as f:
        assert "no PVH entry note" in _fatal(tmp_path, f.read())


def test_protocol_too_old(tmp_path) -> None:
    assert "too old" in _fatal(tmp_path, _bzimage(0x204))


def test_truncated_bzimage(tmp_path) -> None:
    assert "truncated" in _fatal(tmp_path, _bzimage(0x20F, syssize=0x1000))


def test_ram_too_small_for_the_kernel(tmp_path) -> None:
    image = bytearray(_bzimage(0x20F))
    struct.pack_into("<I", image, 0x260, 64 << 20)  # init_size
    assert "needs at least 65 MiB" in _fatal(tmp_path, bytes(image), "-m", "32")


@pytest.mark.parametrize("mib,message", [
    (40, "is larger than the guest's 32 MiB of RAM"),    # refused before it is read
    (31, "initrd does not fit"),                         # smaller than RAM, not beside the kernel
])
def test_initrd_bigger_than_ram(tmp_path, mib, message) -> None:
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(mib << 20)
    line = _fatal(tmp_path, _bzimage(0x20F), "-m", "32", "-i", str(initrd))
    assert message in line


def test_boot_mode_the_image_lacks(tmp_path) -> None:
    assert "--boot-mode pvh" in _fatal(tmp_path, _bzimage(0x20F), "--boot-mode", "pvh")
