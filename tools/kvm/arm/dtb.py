"""The device tree of lkvm's arm64 machine: its RAM, CPUs (brought up with
PSCI), GIC and timer, the UART and RTC, the CFI flash (-F), the
virtio-mmio devices and the PCI host bridge (ECAM) with the INTx lines
of its slots."""

from dataclasses import dataclass

from arm.gic import (
    GIC_PPI,
    GIC_SPI,
    IRQ_TYPE_LEVEL_HIGH,
    PHANDLE_APB_CLOCK,
    PHANDLE_GIC,
    Gic,
    GicV2,
)
from arm.layout import (
    FDT_MAX_SIZE,
    PCI_ECAM,
    PCI_ECAM_SIZE,
    PCI_MMIO_END,
    PCI_MMIO_START,
    RTC_BASE,
    RTC_SIZE,
    UART_BASE,
    UART_SIZE,
)
from arm.vcpu import mpidr_affinity
from hw.cfi_flash import BANK_WIDTH
from kvm.fdt import DeviceTree, chosen_and_memory, u64_cells

# The architected timer's PPIs: secure and non-secure physical, virtual,
# hypervisor (the order of the arm,armv8-timer binding).
TIMER_PPIS = (13, 14, 11, 10)
UART_CLOCK = 1843200      # the 16550's usual crystal: Linux derives the baud rate from it
APB_CLOCK = 24000000
# PCI: the space code of 32-bit memory in a ranges entry's first cell
# (IEEE 1275 PCI binding), and INTA#, the only pin lkvm's devices use.
PCI_MEM32 = 0x02000000
PCI_INTA = 1


@dataclass(frozen=True)
class Machine:
    """What the device tree says, gathered by the arch from the VM."""
    ram: tuple[tuple[int, int], ...]     # (base, size)
    cpus: int
    gic: Gic
    cmdline: str
    uart_irq: int                        # SPI numbers from here on
    rtc_irq: int
    initrd: tuple[int, int] | None = None
    virtio_mmio: tuple[tuple[int, int, int], ...] = ()   # (base, size, SPI)
    pci_slots: tuple[tuple[int, int], ...] = ()          # (slot, SPI) of INTA#
    flash: tuple[int, int] | None = None                 # the CFI flash's (base, size)


def spi(line: int) -> list[int]:
    return [GIC_SPI, line, IRQ_TYPE_LEVEL_HIGH]


def build(m: Machine) -> bytes:
    dt = DeviceTree()
    uart = f"/uart@{UART_BASE:x}"
    with dt.node("", {"compatible": "linux,dummy-virt", "model": "lkvm",
                      "#address-cells": 2, "#size-cells": 2, "interrupt-parent": PHANDLE_GIC}):
        # lkvm places the BARs as firmware would, and Linux is to keep them
        # (as pci=conf1 makes it do on x86): left to itself it reassigns
        # every BAR in an order of its own, which swaps two devices' BARs
        # through addresses the other still holds.
        chosen_and_memory(dt, m.cmdline, m.initrd, m.ram,
                          {"stdout-path": uart, "linux,pci-probe-only": 1})
        with dt.node("cpus", {"#address-cells": 1, "#size-cells": 0}):
            for i in range(m.cpus):
                dt.leaf(f"cpu@{mpidr_affinity(i):x}", {
                    "device_type": "cpu", "compatible": "arm,arm-v8",
                    "enable-method": "psci", "reg": mpidr_affinity(i)})
        dt.leaf("psci", {"compatible": ["arm,psci-0.2", "arm,psci"], "method": "hvc"})
        m.gic.describe(dt, m.cpus)
        # GICv2 names the CPUs a PPI goes to; GICv3 has no such mask.
        ppi_flags = IRQ_TYPE_LEVEL_HIGH
        if isinstance(m.gic, GicV2):
            ppi_flags |= ((1 << m.cpus) - 1) << 8
        dt.leaf("timer", {
            "compatible": ["arm,armv8-timer", "arm,armv7-timer"], "always-on": b"",
            "interrupts": [c for ppi in TIMER_PPIS for c in (GIC_PPI, ppi, ppi_flags)]})
        dt.leaf("apb-pclk", {
            "compatible": "fixed-clock", "#clock-cells": 0, "clock-frequency": APB_CLOCK,
            "clock-output-names": "clk24mhz", "phandle": PHANDLE_APB_CLOCK})
        dt.leaf(uart[1:], {
            "compatible": "ns16550a", "reg": u64_cells(UART_BASE, UART_SIZE),
            "interrupts": spi(m.uart_irq), "clock-frequency": UART_CLOCK, "reg-io-width": 1})
        dt.leaf(f"rtc@{RTC_BASE:x}", {
            "compatible": ["arm,pl031", "arm,primecell"], "reg": u64_cells(RTC_BASE, RTC_SIZE),
            "interrupts": spi(m.rtc_irq), "clocks": PHANDLE_APB_CLOCK,
            "clock-names": "apb_pclk"})
        if m.flash is not None:
            base, size = m.flash
            # EDK2 finds its variable store by this compatible and label.
            dt.leaf(f"flash@{base:x}", {
                "compatible": "cfi-flash", "reg": u64_cells(base, size),
                "bank-width": BANK_WIDTH, "label": "System-firmware"})
        for base, size, line in m.virtio_mmio:
            dt.leaf(f"virtio_mmio@{base:x}", {
                "compatible": "virtio,mmio", "dma-coherent": b"",
                "reg": u64_cells(base, size), "interrupts": spi(line)})
        pci_host(dt, m.pci_slots)
    return dt.finish(FDT_MAX_SIZE)


def pci_host(dt: DeviceTree, slots: tuple[tuple[int, int], ...]) -> None:
    """The generic ECAM host bridge of bus 0: its BAR window mapped one
    to one, and each slot's INTA# to the SPI its device raises."""
    window = PCI_MMIO_END - PCI_MMIO_START
    with dt.node(f"pci@{PCI_ECAM:x}", {
            "compatible": "pci-host-ecam-generic", "device_type": "pci",
            "#address-cells": 3, "#size-cells": 2, "#interrupt-cells": 1, "dma-coherent": b"",
            "bus-range": [0, 0], "reg": u64_cells(PCI_ECAM, PCI_ECAM_SIZE),
            "ranges": [PCI_MEM32, *u64_cells(PCI_MMIO_START, PCI_MMIO_START, window)]}):
        if slots:  # the device number is bits 15:11 of the address's first cell
            dt.prop("interrupt-map", [c for slot, line in slots for c in
                                      (slot << 11, 0, 0, PCI_INTA, PHANDLE_GIC, *spi(line))])
            dt.prop("interrupt-map-mask", [0xF800, 0, 0, 7])
