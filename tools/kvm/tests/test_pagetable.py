"""The page-table walk of register dumps, over tables built in a mock
guest memory: every paging mode, large pages, holes and bad pointers."""

import pytest

from include.uapi import lib
from kvm.errors import GuestError
from x86.pagetable import EFER_LMA, PTE_PRESENT, PTE_PS, walk


class Memory:
    """Sparse guest RAM below `size`: unwritten bytes read as zero."""

    def __init__(self, size: int = 1 << 30) -> None:
        self.size = size
        self.words: dict[int, bytes] = {}

    def put(self, gpa: int, value: int, width: int = 8) -> None:
        self.words[gpa] = value.to_bytes(width, "little")

    def read(self, gpa: int, length: int) -> bytes:
        if gpa + length > self.size:
            raise GuestError(f"{gpa:#x} outside RAM")
        return self.words.get(gpa, bytes(length))[:length]


P = PTE_PRESENT | 0x2  # present, writable
LONG = dict(cr0=lib.X86_CR0_PG | lib.X86_CR0_PE, cr4=lib.X86_CR4_PAE, efer=EFER_LMA)


def long_tables(mem: Memory, linear: int, page: int, large_pde: bool = False) -> None:
    idx = [(linear >> s) & 0x1FF for s in (39, 30, 21, 12)]
    mem.put(0x1000 + idx[0] * 8, 0x2000 | P)
    mem.put(0x2000 + idx[1] * 8, 0x3000 | P)
    if large_pde:
        mem.put(0x3000 + idx[2] * 8, page | P | PTE_PS)
    else:
        mem.put(0x3000 + idx[2] * 8, 0x4000 | P)
        mem.put(0x4000 + idx[3] * 8, page | P)


def test_paging_off():
    w = walk(Memory(), cr0=lib.X86_CR0_PE, cr3=0, cr4=0, efer=0, linear=0x1234)
    assert (w.entries, w.physical, w.problem) == ([], 0x1234, "paging off")


def test_long_mode_4k_page():
    mem, va = Memory(), 0xFFFFFFFF81000123
    long_tables(mem, va, 0x00200000)
    w = walk(mem, cr3=0x1000, linear=va, **LONG)
    assert [name for name, _ in w.entries] == ["pml4e", "pdpte", "pde", "pte"]
    assert w.physical == 0x00200123 and w.problem is None


def test_long_mode_2m_page():
    mem, va = Memory(), 0x40312345
    long_tables(mem, va, 0x00600000, large_pde=True)
    w = walk(mem, cr3=0x1000, linear=va, **LONG)
    assert len(w.entries) == 3 and w.physical == 0x00712345


def test_not_present_stops_the_walk():
    mem, va = Memory(), 0x7000
    long_tables(mem, va, 0x9000)
    mem.put(0x3000, 0x4000)  # pde without the present bit
    w = walk(mem, cr3=0x1000, linear=va, **LONG)
    assert [n for n, _ in w.entries] == ["pml4e", "pdpte", "pde"]
    assert w.physical is None and w.problem == "not present"


def test_a_table_outside_ram_is_reported_not_read():
    mem, va = Memory(size=0x10000), 0x5000
    mem.put(0x1000, 0xFFFF0000 | P)  # pml4e points far outside RAM
    w = walk(mem, cr3=0x1000, linear=va, **LONG)
    assert w.physical is None and "outside guest RAM" in w.problem


def test_legacy_32bit_and_4m_pages():
    mem = Memory()
    mem.put(0x1000 + 1 * 4, 0x2000 | P, 4)
    mem.put(0x2000 + 2 * 4, 0x5000 | P, 4)
    cr0 = lib.X86_CR0_PG | lib.X86_CR0_PE
    w = walk(mem, cr0=cr0, cr3=0x1000, cr4=0, efer=0, linear=(1 << 22) | (2 << 12) | 0x7)
    assert w.physical == 0x5007 and [n for n, _ in w.entries] == ["pde", "pte"]
    mem.put(0x1000 + 3 * 4, 0x00C00000 | P | PTE_PS, 4)
    w = walk(mem, cr0=cr0, cr3=0x1000, cr4=lib.X86_CR4_PSE, efer=0, linear=(3 << 22) | 0x1234)
    assert w.physical == 0x00C01234


@pytest.mark.parametrize("la57", [False, True])
def test_pae_and_five_levels(la57):
    mem = Memory()
    cr0 = lib.X86_CR0_PG | lib.X86_CR0_PE
    if la57:
        mem.put(0x8000, 0x1000 | P)  # pml5e 0 -> the 4-level tables
        long_tables(mem, 0x3000, 0xA000)
        w = walk(mem, cr0=cr0, cr3=0x8000, cr4=lib.X86_CR4_PAE | lib.X86_CR4_LA57,
                 efer=EFER_LMA, linear=0x3000)
        assert len(w.entries) == 5 and w.physical == 0xA000
    else:
        mem.put(0x1020 + 8, 0x2000 | P)  # PDPT at 0x1020, entry 1
        mem.put(0x2000, 0x3000 | P)
        mem.put(0x3000, 0xB000 | P)
        w = walk(mem, cr0=cr0, cr3=0x1020, cr4=lib.X86_CR4_PAE, efer=0, linear=1 << 30)
        assert [n for n, _ in w.entries] == ["pdpte", "pde", "pte"] and w.physical == 0xB000
