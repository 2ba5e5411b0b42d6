"""The arm64 Image boot protocol (Documentation/arch/arm64/booting.rst):
a 64-byte header at the start of the image, "ARM\\x64" at 0x38, that says
how far past a 2 MiB aligned base the image goes (text_offset) and how
much memory it takes once running (image_size, BSS included)."""

import struct
from dataclasses import dataclass

from kvm.errors import LkvmError

# code0, code1, text_offset, image_size, flags, res2, res3, res4, magic, res5
HEADER = struct.Struct("<IIQQQQQQII")
MAGIC = 0x644D5241  # "ARM\x64"
FLAG_BE = 1 << 0    # the kernel is big-endian
PAGE = 0x1000

# Images from other arches and formats, told apart by a signature at an
# offset, so that a wrong file gets a line that says what it is.
FOREIGN = (
    (0x202, b"HdrS", "an x86 bzImage"),
    (0, b"\x7fELF", "an ELF file (a vmlinux?); arm64 boots the raw Image, "
                    "arch/arm64/boot/Image"),
)


@dataclass(frozen=True)
class Image:
    data: bytes
    text_offset: int
    size: int      # what the kernel takes from its load address on

    @classmethod
    def parse(cls, data: bytes) -> "Image":
        for offset, signature, what in FOREIGN:
            if data[offset:offset + len(signature)] == signature:
                raise LkvmError(f"the kernel is {what}; this arm64 lkvm boots arm64 Images")
        if len(data) < HEADER.size or HEADER.unpack_from(data)[8] != MAGIC:
            raise LkvmError("the kernel is not an arm64 Image: no \"ARM\\x64\" magic at 0x38")
        _, _, text_offset, image_size, flags, *_ = HEADER.unpack_from(data)
        if flags & FLAG_BE:
            raise LkvmError("the kernel is a big-endian arm64 Image; lkvm boots "
                            "little-endian ones")
        if text_offset % PAGE or text_offset >= 1 << 32:
            raise LkvmError(f"bad arm64 Image header: text_offset {text_offset:#x} is not "
                            "a page multiple below 4 GiB")
        if image_size and image_size < len(data):
            raise LkvmError(f"bad arm64 Image header: image_size {image_size:#x} is less "
                            f"than the file's {len(data):#x} bytes")
        # image_size 0: a kernel older than 3.17, which takes what follows
        # its end as it needs; the file's size is the least it takes.
        return cls(data, text_offset, image_size or len(data))

