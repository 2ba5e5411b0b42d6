"""The stage-1 translation of an EL1&0 virtual address, as the MMU walks
the guest's tables (Arm ARM D8, VMSAv8-64): VA bit 55 picks TTBR0 or
TTBR1, TCR_EL1 gives each half its size and granule; the MMU off
(SCTLR_EL1.M clear) means virtual = physical.  Descriptors with 48-bit
output addresses (no LPA/LPA2)."""

from collections.abc import Callable
from dataclasses import dataclass

from kvm.errors import GuestError

SCTLR_M = 1 << 0
DESC_VALID, DESC_TABLE = 1 << 0, 1 << 1  # DESC_TABLE: also "page" at the last level
OUTPUT = (1 << 48) - 1
TTBR_BADDR = OUTPUT & ~1  # above it the ASID, below it CnP
# TCR_EL1 per half (TTBR0, TTBR1): TxSZ's shift, EPDx's bit, TGx's shift,
# TBIx's bit, and TGx's encodings as granule sizes in address bits.
HALVES = (
    (0, 7, 14, 37, {0b00: 12, 0b01: 16, 0b10: 14}),
    (16, 23, 30, 38, {0b10: 12, 0b11: 16, 0b01: 14}),
)
LAST_LEVEL = 3


@dataclass(frozen=True)
class Regime:
    """The system registers the walk reads."""
    sctlr: int
    tcr: int
    ttbr0: int
    ttbr1: int


def walk(read64: Callable[[int], int], regime: Regime, va: int) -> int | None:
    """The physical address of `va`, or None where nothing maps it.
    read64 reads a descriptor at a guest physical address and raises
    GuestError outside RAM (a table the guest pointed nowhere)."""
    if not regime.sctlr & SCTLR_M:
        return va if va <= OUTPUT else None
    upper = va >> 55 & 1
    tsz_shift, epd_bit, tg_shift, tbi_bit, granules = HALVES[upper]
    tsz = regime.tcr >> tsz_shift & 0x3F
    granule = granules.get(regime.tcr >> tg_shift & 3)
    if regime.tcr >> epd_bit & 1 or granule is None or not 16 <= tsz <= 48:
        return None
    size = 64 - tsz  # bits of input address
    top = 56 if regime.tcr >> tbi_bit & 1 else 64  # a top byte ignored
    if va >> size & (1 << top - size) - 1 != (upper and (1 << top - size) - 1):
        return None  # outside both halves
    stride = granule - 3  # each table holds 2^stride descriptors
    level = LAST_LEVEL - (size - granule - 1) // stride
    table = (regime.ttbr1 if upper else regime.ttbr0) & TTBR_BADDR
    try:
        while True:
            shift = granule + stride * (LAST_LEVEL - level)
            index = va >> shift & (1 << min(stride, size - shift)) - 1
            desc = read64(table + 8 * index)
            if not desc & DESC_VALID:
                return None
            if level == LAST_LEVEL or not desc & DESC_TABLE:
                if level == LAST_LEVEL and not desc & DESC_TABLE or level == 0:
                    return None  # reserved encodings
                return desc & OUTPUT & ~((1 << shift) - 1) | va & (1 << shift) - 1
            table = desc & OUTPUT & ~((1 << granule) - 1)
            level += 1
    except GuestError:
        return None
