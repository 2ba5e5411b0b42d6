"""Entering a kernel past its real-mode code: a flat GDT, identity-mapped
page tables and the control registers for 64-bit or 32-bit protected mode."""

import struct

from include.uapi import ffi, lib
from x86.layout import BOOT_GDT_ADDR, BOOT_STACK_TOP, PML4_ADDR

# Architectural values (Intel SDM vol. 3, AMD APM vol. 2): no uapi header
# carries the EFER MSR's bits or the page-table entry bits.
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
PTE_PRESENT, PTE_RW, PTE_PS = 1 << 0, 1 << 1, 1 << 7
PAGE = 4096
IDENTITY_GIB = 4  # 2 MiB pages covering the low 4 GiB, MMIO holes included

# The GDT Linux's boot protocol asks for: flat code at __BOOT_CS (0x10) and
# flat data at __BOOT_DS (0x18); a 64-bit or a 32-bit code segment.
BOOT_CS, BOOT_DS = 0x10, 0x18
GDT = (0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
GDT32 = (0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)
SEG_CODE, SEG_DATA = 0xB, 0x3  # execute/read accessed, read/write accessed


def write_gdt(mem: object, entries: tuple[int, ...]) -> None:
    mem.write(BOOT_GDT_ADDR, struct.pack(f"<{len(entries)}Q", *entries))


def write_page_tables(mem: object) -> None:
    """PML4 -> one PDPT -> IDENTITY_GIB page directories of 2 MiB pages."""
    pdpt = PML4_ADDR + PAGE
    pds = pdpt + PAGE
    flags = PTE_PRESENT | PTE_RW
    mem.write(PML4_ADDR, struct.pack("<Q", pdpt | flags))
    mem.write(pdpt, struct.pack(f"<{IDENTITY_GIB}Q",
                                *(pds + i * PAGE | flags for i in range(IDENTITY_GIB))))
    mem.write(pds, struct.pack(f"<{IDENTITY_GIB * 512}Q",
                               *((i << 21) | flags | PTE_PS for i in range(IDENTITY_GIB * 512))))


def _flat(seg: object, selector: int, kind: int, long: bool) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, kind
    seg.present, seg.dpl, seg.s, seg.g, seg.avl = 1, 0, 1, 1, 0
    seg.l, seg.db = (1, 0) if long else (0, 1)


def _enter(vcpu: object, long: bool, table: tuple[int, ...]) -> object:
    sregs = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
    _flat(sregs.cs, BOOT_CS, SEG_CODE, long)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _flat(getattr(sregs, name), BOOT_DS, SEG_DATA, False)
    sregs.gdt.base, sregs.gdt.limit = BOOT_GDT_ADDR, len(table) * 8 - 1
    sregs.cr0 = lib.X86_CR0_PE | lib.X86_CR0_ET | (lib.X86_CR0_PG if long else 0)
    sregs.cr4 = lib.X86_CR4_PAE if long else 0
    sregs.cr3 = PML4_ADDR if long else 0
    sregs.efer = EFER_LME | EFER_LMA if long else 0
    vcpu.set(lib.KVM_SET_SREGS, sregs)
    return sregs


def enter_64(vcpu: object, rip: int, rsi: int) -> None:
    """64-bit mode at `rip`, paging on, `rsi` = the zero page."""
    _enter(vcpu, True, GDT)
    vcpu.set(lib.KVM_SET_REGS, _regs(rip, rsi=rsi, rsp=BOOT_STACK_TOP))


def enter_32(vcpu: object, eip: int, ebx: int) -> None:
    """Flat 32-bit protected mode, paging off (the PVH entry state)."""
    _enter(vcpu, False, GDT32)
    vcpu.set(lib.KVM_SET_REGS, _regs(eip, rbx=ebx))


def _regs(ip: int, **values: int) -> object:
    return ffi.new("struct kvm_regs *", {"rip": ip, "rflags": lib.X86_EFLAGS_FIXED, **values})
