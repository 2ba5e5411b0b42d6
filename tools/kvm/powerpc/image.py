"""ppc64le kernel images: a vmlinux ELF, its segments loaded at their
physical addresses (0 up) and entered at its entry's real address, as
kvmtool's powerpc port did; anything else is a flat binary at 0."""

import struct
from dataclasses import dataclass

from kvm.errors import LkvmError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB, EM_PPC64, PT_LOAD = 2, 1, 21, 1
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
# A kernel's addresses are in its linear map (0xc000...): the top nibble
# goes, as the MMU drops it in real mode.
REAL_MASK = (1 << 60) - 1


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: memoryview
    memsz: int


@dataclass(frozen=True)
class Image:
    entry: int
    segments: tuple[Segment, ...]
    linux: bool

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @classmethod
    def parse(cls, image: bytes) -> "Image":
        if not image.startswith(ELF_MAGIC):
            return cls(0, (Segment(0, memoryview(image), len(image)),), False)
        if len(image) < EHDR.size:
            raise LkvmError("the kernel is an ELF file too short for its header")
        ident, _type, machine, _ver, entry, phoff, _sh, _fl, _eh, phentsize, phnum, *_ = \
            EHDR.unpack_from(image)
        if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or machine != EM_PPC64:
            raise LkvmError("the ELF kernel is not a little-endian ppc64 one (ppc64le)")
        segments = []
        for i in range(phnum):
            at = phoff + i * phentsize
            if phentsize < PHDR.size or at + PHDR.size > len(image):
                raise LkvmError("the vmlinux is truncated or its program headers malformed")
            p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = \
                PHDR.unpack_from(image, at)
            if p_type != PT_LOAD:
                continue
            if filesz > memsz or offset + filesz > len(image):
                raise LkvmError("the vmlinux is truncated or its segments are malformed")
            segments.append(Segment(paddr & REAL_MASK,
                                    memoryview(image)[offset:offset + filesz], memsz))
        if not segments:
            raise LkvmError("the vmlinux has nothing to load")
        return cls(entry & REAL_MASK, tuple(segments), True)
