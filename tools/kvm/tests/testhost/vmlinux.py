"""Extract the uncompressed ELF vmlinux from an x86 bzImage.

QEMU boots an ELF vmlinux with a PVH note directly (`-kernel vmlinux`), which
skips the kernel's self-decompression: slow under TCG, where L1 runs.
"""

import lzma
import struct
import subprocess
import zlib

# Boot protocol header fields (Documentation/x86/boot.rst).
_SETUP_SECTS = 0x1F1
_HEADER_MAGIC = 0x202
_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_LZ4_LEGACY = b"\x02\x21\x4c\x18"  # Debian's cloud kernel
_ZSTD = b"\x28\xb5\x2f\xfd"  # Debian's kernels from 6.12 on


def _decompress(payload: bytes) -> bytes:
    # Trailing bytes after the stream (the build appends the decompressed
    # size) are left in unused_data.
    if payload.startswith(b"\xfd7zXZ\0"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if payload.startswith(_LZ4_LEGACY):
        # No lz4 module in Python's library: the lz4 tool (which complains
        # about the size the build appends, after a complete stream).
        done = subprocess.run(["lz4", "-dc"], input=payload, capture_output=True, check=False)
        return done.stdout
    if payload.startswith(_ZSTD):
        # Nor a zstd module before Python 3.14; zstd stops at the stream's end.
        done = subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=False)
        return done.stdout
    raise ValueError(f"unsupported kernel compression (magic {payload[:6].hex()})")


def extract(bzimage: bytes) -> bytes:
    """The vmlinux ELF inside `bzimage` (xz, gzip, lz4 or zstd compressed,
    protocol >= 2.08)."""
    if bzimage[_HEADER_MAGIC : _HEADER_MAGIC + 4] != b"HdrS":
        raise ValueError("not a bzImage: no HdrS header")
    (version,) = struct.unpack_from("<H", bzimage, _VERSION)
    if version < 0x208:
        raise ValueError(f"boot protocol {version:#x} has no payload fields")
    setup_sects = bzimage[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", bzimage, _PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    elf = _decompress(bzimage[start : start + length])
    if not elf.startswith(b"\x7fELF"):
        raise ValueError("payload did not decompress to an ELF image")
    return elf
