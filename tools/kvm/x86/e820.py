"""The guest's physical memory map as a PC BIOS reports it (INT 15h E820,
the zero page's e820_table, PVH's memmap)."""

from include.uapi import lib
from x86.layout import BIOS_END, BIOS_START, EBDA_END, EBDA_START, KERNEL_ADDR

E820_ENTRY = "<QQI"  # base, length, type: the BIOS's 20-byte record (ACPI spec 15.1)


def e820_map(regions: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(address, size, type) entries for guest RAM laid out as `regions`:
    conventional memory below the EBDA, the EBDA and the BIOS reserved, then RAM from
    1 MiB (the PCI hole below 4 GiB is simply not listed)."""
    (low_gpa, low_size), *high = regions
    assert low_gpa == 0 and low_size > KERNEL_ADDR
    entries = [(0, EBDA_START, lib.E820_RAM),
               (EBDA_START, EBDA_END - EBDA_START, lib.E820_RESERVED),
               (BIOS_START, BIOS_END - BIOS_START, lib.E820_RESERVED),
               (KERNEL_ADDR, low_size - KERNEL_ADDR, lib.E820_RAM)]
    entries += [(gpa, size, lib.E820_RAM) for gpa, size in high]
    return entries
