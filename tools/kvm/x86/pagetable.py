"""A walk of the guest's own page tables through guest memory, for
register dumps: every entry on the way from a linear address to its page.

Entry bits and table shapes are the hardware's (Intel SDM vol. 3, ch. 4
"Paging"), not kernel ABI.
"""

from dataclasses import dataclass

from include.uapi import lib
from kvm.errors import GuestError

PTE_PRESENT = 1 << 0
PTE_PS = 1 << 7  # this entry maps a large page
PTE_ADDR = 0x000FFFFFFFFFF000  # bits 51:12: the next table or the page
PTE32_ADDR = 0xFFFFF000
EFER_LMA = 1 << 10  # IA32_EFER.LMA: long mode is active
PAE_PDPT_ADDR = 0xFFFFFFE0  # CR3 bits 31:5 with PAE


@dataclass(frozen=True)
class Level:
    name: str
    shift: int  # the lowest linear-address bit this level's index uses
    bits: int  # how many bits the index has
    size: int  # bytes per entry
    large: bool  # may map a page directly (PS set)


LONG4 = (Level("pml4e", 39, 9, 8, False), Level("pdpte", 30, 9, 8, True),
         Level("pde", 21, 9, 8, True), Level("pte", 12, 9, 8, False))
LONG5 = (Level("pml5e", 48, 9, 8, False),) + LONG4
PAE = (Level("pdpte", 30, 2, 8, False), Level("pde", 21, 9, 8, True),
       Level("pte", 12, 9, 8, False))
LEGACY = (Level("pde", 22, 10, 4, True), Level("pte", 12, 10, 4, False))


@dataclass
class Walk:
    entries: list[tuple[str, int]]
    physical: int | None
    problem: str | None = None


def mode(cr0: int, cr4: int, efer: int) -> tuple[tuple[Level, ...], int] | None:
    """The table shape and the mask of CR3's table address, or None when
    paging is off."""
    if not cr0 & lib.X86_CR0_PG:
        return None
    if efer & EFER_LMA:
        return (LONG5 if cr4 & lib.X86_CR4_LA57 else LONG4), PTE_ADDR
    if cr4 & lib.X86_CR4_PAE:
        return PAE, PAE_PDPT_ADDR
    return LEGACY, PTE32_ADDR


def walk(mem: object, cr0: int, cr3: int, cr4: int, efer: int, linear: int) -> Walk:
    shape = mode(cr0, cr4, efer)
    if shape is None:
        return Walk([], linear, "paging off")
    levels, cr3_mask = shape
    table = cr3 & cr3_mask
    entries: list[tuple[str, int]] = []
    for i, level in enumerate(levels):
        index = (linear >> level.shift) & ((1 << level.bits) - 1)
        gpa = table + index * level.size
        try:
            entry = int.from_bytes(mem.read(gpa, level.size), "little")
        except GuestError:
            return Walk(entries, None, f"{level.name} at {gpa:#x} is outside guest RAM")
        entries.append((level.name, entry))
        if not entry & PTE_PRESENT:
            return Walk(entries, None, "not present")
        addr_mask = PTE32_ADDR if level.size == 4 else PTE_ADDR
        last = i == len(levels) - 1
        if last or (level.large and entry & PTE_PS and
                    (level.size == 8 or cr4 & lib.X86_CR4_PSE)):
            page_mask = (1 << level.shift) - 1
            return Walk(entries, (entry & addr_mask & ~page_mask) | (linear & page_mask))
        table = entry & addr_mask
    raise AssertionError("a walk ends at its last level")
