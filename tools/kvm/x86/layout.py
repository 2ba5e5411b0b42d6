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
