"""Where things sit in an x86 guest's physical address space."""

# KVM needs three pages for the TSS of real-mode emulation and one for the
# EPT identity map, somewhere the guest never uses: just below the BIOS.
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000

# PCI devices need 32-bit MMIO space, so RAM past this point moves above
# 4 GiB, as on real machines.
GAP_START = 0xD0000000
GAP_END = 1 << 32

# Flat binaries load at 1000:0000 and start there in real mode, as in kvmtool.
BOOT_LOADER_SELECTOR = 0x1000
BOOT_LOADER_IP = 0x0000
BOOT_LOADER_SP = 0x8000


def ram_layout(size: int) -> list[tuple[int, int]]:
    """RAM as (guest physical address, size) ranges, around the PCI hole."""
    if size <= GAP_START:
        return [(0, size)]
    return [(0, GAP_START), (GAP_END, size - GAP_START)]

# virtio-mmio devices sit after 256 MiB of PCI BAR space, well below the
# IOAPIC (0xFEC00000) and the LAPIC (0xFEE00000).
VIRTIO_MMIO_START = GAP_START + (256 << 20)

# The PC's low memory (kvmtool's x86/include/kvm/bios.h has the same map):
# the real-mode IVT and BIOS data area, conventional RAM up to the EBDA,
# the EBDA, the VGA hole and option ROMs, then the BIOS at 0xF0000.
REAL_MODE_IVT = 0x0
BDA_START = 0x400
EBDA_START = 0x9FC00
EBDA_END = 0xA0000
BIOS_START = 0xF0000
BIOS_END = 0x100000
# In the BIOS area, after the BIOS code: the MP table and the ACPI tables.
MPTABLE_START = 0xF8000
ACPI_START = 0xFA000

# Linux's boot protocol (Documentation/arch/x86/boot.rst): real-mode setup
# code at 0x10000, the command line after its 64 KiB segment, the
# protected-mode kernel at 1 MiB.
SETUP_SEG = 0x1000
SETUP_ADDR = SETUP_SEG << 4
CMDLINE_ADDR = 0x20000
KERNEL_ADDR = 0x100000

# What lkvm builds for the 64-bit and PVH entries, in conventional RAM the
# kernel reclaims once it has copied what it needs: the GDT, the zero page
# (struct boot_params) or hvm_start_info, and the boot page tables.
BOOT_GDT_ADDR = 0x500
ZERO_PAGE_ADDR = 0x7000
BOOT_STACK_TOP = 0x9000  # a page of stack: the 64-bit entry pushes before it sets its own
PML4_ADDR = 0x9000
