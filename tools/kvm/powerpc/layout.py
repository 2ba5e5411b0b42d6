"""The ppc64 guest's physical address map: RAM from 0 (where a vmlinux
loads and the exception vectors are), and lkvm's own pieces at its top:
the device tree, and the RTAS blob under it."""

SZ_4K, SZ_64K, SZ_1M = 0x1000, 0x10000, 0x100000

RAM_START = 0

# From the top of RAM down: the device tree in at most FDT_MAX_SIZE, then
# RTAS's page; an initrd goes below them.
FDT_MAX_SIZE = SZ_64K
RTAS_SIZE = SZ_4K

# PCI BARs, far above any RAM lkvm gives, where the CPU sees them: the
# host bridge (phb.py) maps them there from the top 2 GiB of the PCI bus's
# 32-bit space, the BARs' own addresses (lkvm's BARs are 32-bit ones).
PCI_MMIO_START, PCI_MMIO_END = 0x2000_0000_0000, 0x2000_8000_0000
PCI_BUS_START = 0x8000_0000
VIRTIO_MMIO_START = 0x2001_0000_0000
