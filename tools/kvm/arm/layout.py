"""The arm64 guest's physical address map: devices in the low GiB, as
QEMU's virt machine has them (Linux and its tests know that map), and RAM
from 2 GiB up."""

SZ_4K, SZ_64K, SZ_1M, SZ_2M = 0x1000, 0x10000, 0x100000, 0x200000

# The GIC: the distributor, then GICv2's CPU interface or GICv3's
# redistributors, two 64 KiB frames (RD and SGI) per vCPU.
GIC_DIST, GIC_DIST_SIZE = 0x08000000, SZ_64K
GICV2_CPU, GICV2_CPU_SIZE = 0x08010000, 0x2000
GIC_REDIST, GIC_REDIST_STRIDE = 0x080A0000, 2 * SZ_64K
GIC_REDIST_END = 0x09000000

# The CFI flash (-F/--flash), where kvmtool has it: 32 MiB, up to 16 MiB.
FLASH_BASE, FLASH_MAX_SIZE = 0x02000000, 0x01000000

UART_BASE, UART_SIZE = 0x09000000, SZ_4K
RTC_BASE, RTC_SIZE = 0x09010000, SZ_4K
VIRTIO_MMIO_START = 0x0A000000

# PCI: 32-bit BARs, then the configuration space of bus 0 (ECAM: 4 KiB
# per function, 32 slots of 8 functions).
PCI_MMIO_START, PCI_MMIO_END = 0x10000000, 0x30000000
PCI_ECAM, PCI_ECAM_SIZE = 0x30000000, SZ_1M

RAM_START = 0x80000000

# The device tree sits at the top of RAM, 2 MiB aligned (booting.rst: it
# is mapped with 2 MiB blocks), in at most this much.
FDT_MAX_SIZE = SZ_64K
