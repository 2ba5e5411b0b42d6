"""Command descriptor blocks: the opcodes libc's <scsi/scsi.h> predates
(SBC-3 and SPC-4 added them), how long each group's CDB is, and the
big-endian fields the commands read."""

from include.uapi import lib

READ_16 = 0x88
WRITE_16 = 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
REPORT_LUNS = 0xA0
UNMAP = 0x42
SAI_READ_CAPACITY_16 = 0x10     # SERVICE ACTION IN(16)'s service action

# A CDB's length follows from its opcode's top three bits (SPC-4 §4.2.5.1).
GROUP_LENGTH = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}


def length(opcode: int) -> int | None:
    """The CDB length `opcode` has, None for the vendor-specific and
    variable-length groups."""
    return GROUP_LENGTH.get(opcode >> 5)


def be(cdb: bytes, start: int, size: int) -> int:
    return int.from_bytes(cdb[start:start + size], "big")


def rw6(cdb: bytes) -> tuple[int, int]:
    """READ(6)/WRITE(6): a 21-bit LBA and a length where 0 means 256."""
    return be(cdb, 1, 3) & 0x1FFFFF, cdb[4] or 256


def rw10(cdb: bytes) -> tuple[int, int]:
    return be(cdb, 2, 4), be(cdb, 7, 2)


def rw12(cdb: bytes) -> tuple[int, int]:
    return be(cdb, 2, 4), be(cdb, 6, 4)


def rw16(cdb: bytes) -> tuple[int, int]:
    return be(cdb, 2, 8), be(cdb, 10, 4)


# Where each reading or writing command keeps its LBA and block count.
EXTENT = {
    lib.READ_6: rw6, lib.WRITE_6: rw6,
    lib.READ_10: rw10, lib.WRITE_10: rw10, lib.WRITE_SAME: rw10,
    lib.SYNCHRONIZE_CACHE: rw10,
    lib.READ_12: rw12, lib.WRITE_12: rw12,
    READ_16: rw16, WRITE_16: rw16, WRITE_SAME_16: rw16, SYNCHRONIZE_CACHE_16: rw16,
}
