"""The built-in BIOS: what a PC's firmware leaves in low memory for a
kernel entered through its real-mode setup code.

The code (x86/bios/bios.S, assembled by make) sits at F000:0000; lkvm
fills the interrupt vector table, the BIOS data area and the e820 map
the code's INT 15h hands out.
"""

import os
import struct

from kvm.errors import LkvmError
from x86.e820 import E820_ENTRY
from x86.layout import BDA_START, BIOS_START, EBDA_START, REAL_MODE_IVT

BIOS_BIN = os.path.join(os.path.dirname(__file__), "bios", "bios.bin")
BIOS_SEG = BIOS_START >> 4
# bios.S's header: offsets of the default handler, the INT 15h handler,
# the e820 count and table, and the table's capacity.
HEADER = "<5H"
IVT_VECTORS = 256
INT15 = 0x15

# BIOS data area fields Linux reads (arch/x86/kernel/ebda.c, IBM PC BIOS
# technical reference): the EBDA's segment and base memory in KiB.
BDA_EBDA_SEGMENT = BDA_START + 0x0E
BDA_BASE_MEMORY_KIB = BDA_START + 0x13


def _code() -> bytes:
    try:
        with open(BIOS_BIN, "rb") as f:
            return f.read()
    except OSError:
        raise LkvmError(f"{BIOS_BIN} is missing: run make") from None


def install(mem: object, e820: list[tuple[int, int, int]]) -> None:
    code = _code()
    default, int15, count_off, table_off, capacity = struct.unpack_from(HEADER, code)
    if len(e820) > capacity:
        raise LkvmError(f"{len(e820)} e820 entries do not fit the BIOS's {capacity}")
    mem.write(BIOS_START, code)
    mem.write(BIOS_START + count_off, struct.pack("<H", len(e820)))
    mem.write(BIOS_START + table_off, b"".join(struct.pack(E820_ENTRY, *e) for e in e820))
    vectors = [(BIOS_SEG << 16) | (int15 if v == INT15 else default) for v in range(IVT_VECTORS)]
    mem.write(REAL_MODE_IVT, struct.pack(f"<{IVT_VECTORS}I", *vectors))
    mem.write(BDA_EBDA_SEGMENT, struct.pack("<H", EBDA_START >> 4))
    mem.write(BDA_BASE_MEMORY_KIB, struct.pack("<H", EBDA_START >> 10))
