"""sPAPR's PCI host bridge (PHB), as a pseries kernel finds it: a node of
device_type "pci" under the root, named in RTAS calls by its BUID (its
reg), through which alone the guest reaches configuration space
(ibm,read-pci-config and ibm,write-pci-config: none in memory or ports),
and a child node per device.  Under an LPAR the kernel learns the devices
from those nodes, not by scanning the bus (pseries' PCI_PROBE_DEVTREE),
and keeps the BARs they give (PCI_PROBE_ONLY).

The BARs hold PCI bus addresses in the bridge's 32-bit window, which the
CPU sees far above RAM (layout.py); INTA# of each slot is an XICS source.

The bridge has a DMA window (ibm,dma-window, tce.py): Linux's pseries code
warns for each device without one and fails its drivers' DMA masks.
/chosen's linux,iommu-off, the other way out, would cap the guest's RAM
at 2 GiB.

No MSIs: they need RTAS ibm,change-msi, which lkvm does not give, and KVM's
XICS takes no MSI routes.  The bridge says so (ibm,pe-total-#msi 0), which
gives it a pseries MSI domain that refuses the drivers' requests (their
nodes have no ibm,req#msi-x), so they fall back to INTx.  Without one, the
kernel would take the XICS's own domain for the bridge's MSI domain and
oops in a driver's first pci_alloc_irq_vectors() (6.1 does).
"""

from typing import TYPE_CHECKING

from include.uapi import lib
from kvm.fdt import DeviceTree, Value, u64_cells
from powerpc import xics
from powerpc.layout import PCI_BUS_START, PCI_MMIO_END, PCI_MMIO_START
from powerpc.rtas import RTAS_HARDWARE_ERROR, RTAS_PARAMETER_ERROR, RTAS_SUCCESS
from powerpc.tce import LIOBN, WINDOW_SIZE

if TYPE_CHECKING:
    from hw.pci import PciBus, PciDevice

# The bridge's bus unit ID: the number QEMU's first PHB has.
BUID = 0x800000020000000
BUID_REG_SIZE = 0x1000
# ibm,pci-config-space-type: 1, the extended (4 KiB) space is reachable.
EXTENDED_CONFIG = 1
CONFIG_SPACE_SIZE = 4096
# An RTAS config_addr (PAPR, the kernel's rtas_config_addr()): register bits
# 0-7 in bits 0-7 and 8-11 in 28-31, function 8-10, device 11-15, bus 16-23;
# bits 24-27 are reserved.
CONFIG_RESERVED = 0x0F000000
ACCESS_SIZES = (1, 2, 4)

# IEEE 1275's PCI binding: a phys.hi cell's space code (32-bit memory), its
# non-relocatable bit, and the device number's place in it.
PCI_MEM32 = 0x02000000
PCI_NON_RELOCATABLE = 0x80000000
PCI_DEVICE_SHIFT = 11
PCI_INTA = 1
XICS_LEVEL = 1          # the second cell of an XICS interrupt: level-triggered


class PhbAccess:
    """The arch's PCI_CONFIG: configuration space is reached through RTAS,
    so nothing to map; the bridge maps its 32-bit window high."""

    def attach(self, bus: "PciBus") -> None:
        bus.mem_offset = PCI_MMIO_START - PCI_BUS_START


def _target(bus: "PciBus | None", buid: int | None, addr: int,
            size: int) -> tuple[int, "PciDevice | None", int]:
    """(status, device, register) of a config access; the device only on
    success.  Bad arguments are the guest's parameter error, a slot with
    no device (or another bus or function) its hardware error.  No BUID
    (read-pci-config, write-pci-config) names the one bridge."""
    reg = addr & 0xFF | addr >> 20 & 0xF00
    if buid not in (None, BUID) or size not in ACCESS_SIZES or addr & CONFIG_RESERVED or reg % size:
        return RTAS_PARAMETER_ERROR, None, 0
    busno, slot, fn = addr >> 16 & 0xFF, addr >> PCI_DEVICE_SHIFT & 0x1F, addr >> 8 & 7
    dev = bus.slots[slot] if bus is not None and busno == 0 and fn == 0 else None
    if dev is None:
        return RTAS_HARDWARE_ERROR, None, 0
    return RTAS_SUCCESS, dev, reg


def read_config(bus: "PciBus | None", buid: int | None, addr: int, size: int) -> tuple[int, int]:
    """ibm,read-pci-config: (status, value).  The extended space past the
    first 256 bytes reads as zero, an empty capability list."""
    status, dev, reg = _target(bus, buid, addr, size)
    if dev is None:
        return status, (1 << 8 * size) - 1 if size in ACCESS_SIZES else 0
    return status, dev.read_config(reg, size) if reg < lib.PCI_CFG_SPACE_SIZE else 0


def write_config(bus: "PciBus | None", buid: int | None, addr: int, size: int, value: int) -> int:
    status, dev, reg = _target(bus, buid, addr, size)
    if dev is not None and reg < lib.PCI_CFG_SPACE_SIZE:
        dev.write_config(reg, size, value & (1 << 8 * size) - 1)
    return status


def describe(dt: DeviceTree, bus: "PciBus | None") -> None:
    """The bridge and its devices, but for lkvm's own host bridge in slot
    0, which a pseries kernel has no use for."""
    window = PCI_MMIO_END - PCI_MMIO_START
    devices = [(slot, dev) for slot, dev in enumerate(bus.slots if bus else ())
               if slot and dev is not None]
    with dt.node(f"pci@{BUID:x}", {
            "device_type": "pci", "compatible": "IBM,Logical_PHB",
            "reg": u64_cells(BUID, BUID_REG_SIZE),
            "#address-cells": 3, "#size-cells": 2, "#interrupt-cells": 1,
            "bus-range": [0, 0], "ibm,pci-config-space-type": EXTENDED_CONFIG,
            "ranges": [PCI_MEM32, 0, PCI_BUS_START, *u64_cells(PCI_MMIO_START, window)],
            # The DMA window: its LIOBN, bus address and size, in the cells
            # these say (the bridge's own #address-cells is the PCI three).
            "ibm,#dma-address-cells": 2, "ibm,#dma-size-cells": 2,
            "ibm,dma-window": [LIOBN, *u64_cells(0, WINDOW_SIZE)],
            "ibm,pe-total-#msi": 0}):
        intx = [(slot, dev.irq_line) for slot, dev in devices
                if dev.config[lib.PCI_INTERRUPT_PIN]]
        if intx:
            dt.prop("interrupt-map", [c for slot, line in intx for c in (
                slot << PCI_DEVICE_SHIFT, 0, 0, PCI_INTA, xics.PHANDLE, line, XICS_LEVEL)])
            dt.prop("interrupt-map-mask", [0x1F << PCI_DEVICE_SHIFT, 0, 0, 7])
        for slot, dev in devices:
            _device(dt, slot, dev)


def _device(dt: DeviceTree, slot: int, dev: "PciDevice") -> None:
    """One function 0 on bus 0: its IDs (the kernel reads them here, not
    from configuration space), its BARs as placed (assigned-addresses, bus
    addresses) and its interrupt pin."""
    def conf(offset: int, size: int) -> int:
        return dev.read_config(offset, size)

    config_addr = slot << PCI_DEVICE_SHIFT
    assigned = []
    for i, bar in enumerate(dev.bars):
        if bar.io:
            continue    # sPAPR has no I/O space: legacy virtio-pci's port BAR has nowhere to be
        reg = lib.PCI_BASE_ADDRESS_0 + 4 * i
        assigned += [PCI_NON_RELOCATABLE | PCI_MEM32 | config_addr | reg,
                     *u64_cells(conf(reg, 4) & ~0xF, bar.size)]
    props: dict[str, Value] = {
        "vendor-id": conf(lib.PCI_VENDOR_ID, 2), "device-id": conf(lib.PCI_DEVICE_ID, 2),
        "revision-id": conf(lib.PCI_REVISION_ID, 1),
        "class-code": conf(lib.PCI_REVISION_ID, 4) >> 8,
        "subsystem-vendor-id": conf(lib.PCI_SUBSYSTEM_VENDOR_ID, 2),
        "subsystem-id": conf(lib.PCI_SUBSYSTEM_ID, 2),
        "reg": [config_addr, 0, 0, 0, 0], "assigned-addresses": assigned,
    }
    if dev.config[lib.PCI_INTERRUPT_PIN]:
        props["interrupts"] = dev.config[lib.PCI_INTERRUPT_PIN]
    dt.leaf(f"pci@{slot:x}", props)
