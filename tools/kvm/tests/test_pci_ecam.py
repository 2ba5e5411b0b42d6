"""PCI configuration through ECAM, as arm64 guests reach it: bus 0's
configuration space as a window of MMIO, each access naming its slot,
function and register in its offset; the ports 0xCF8/0xCFC stay x86's.
Which of them a VM gets is what its arch declares, and nothing else."""

import pytest

from arm.arch import Arm64
from arm.layout import PCI_ECAM
from hw.pci import CONFIG_DATA, ECAM_BUS_SIZE, INTEL_VENDOR, Ecam, PciBus, PciDevice
from include.uapi import lib
from tests.fakevm import FakeVm
from x86.arch import X86

ECAM = 0x30000000
MMIO = (0x10000000, 0x30000000)
VIRTIO_VENDOR, NET_DEVICE, CLASS_NET = 0x1AF4, 0x1000, 0x020000


class Regs:
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def cfg(slot: int, reg: int, fn: int = 0) -> int:
    return ECAM + (slot << 15 | fn << 12 | reg)


@pytest.fixture
def vm():
    return FakeVm()


@pytest.fixture
def bus(vm):
    return PciBus(vm, *MMIO, Ecam(ECAM))


def test_host_bridge_and_empty_slots(vm, bus):
    assert vm.mmio.read(cfg(0, lib.PCI_VENDOR_ID), 2) == INTEL_VENDOR
    assert vm.mmio.read(cfg(0, lib.PCI_CLASS_DEVICE), 2) == 0x0600
    assert vm.mmio.read(cfg(5, lib.PCI_VENDOR_ID), 4) == 0xFFFFFFFF      # no device
    assert vm.mmio.read(cfg(0, lib.PCI_VENDOR_ID, fn=1), 2) == 0xFFFF    # no function 1
    assert vm.mmio.read(cfg(0, lib.PCI_CFG_SPACE_SIZE), 4) == 0          # no extended caps
    assert vm.mmio.read(cfg(0, lib.PCI_VENDOR_ID + 1), 2) == 0xFFFF      # unaligned
    assert vm.mmio.find(ECAM + ECAM_BUS_SIZE) is None                   # bus 0 only
    assert vm.pio.find(CONFIG_DATA) is None                              # no conf1


def test_bar_sizing_and_moving_through_ecam(vm, bus):
    dev = PciDevice(VIRTIO_VENDOR, NET_DEVICE, CLASS_NET)
    dev.add_bar(0x1000, False, Regs())
    dev.set_irq(7)
    slot = bus.add(dev)
    bar0 = cfg(slot, lib.PCI_BASE_ADDRESS_0)
    placed = vm.mmio.read(bar0, 4)
    assert MMIO[0] <= placed < MMIO[1] and vm.mmio.find(placed) is not None
    vm.mmio.write(bar0, 4, 0xFFFFFFFF)
    assert vm.mmio.read(bar0, 4) == 0xFFFFF000       # the size, as a mask
    vm.mmio.write(bar0, 4, 0x20000000)
    assert vm.mmio.read(bar0, 4) == 0x20000000
    assert vm.mmio.find(0x20000000)[1] is dev.bars[0].dev and vm.mmio.find(placed) is None
    assert bus.intx_slots() == [(slot, 7)]
    # Writes to read-only registers change nothing.
    vm.mmio.write(cfg(slot, lib.PCI_VENDOR_ID), 2, 0x1234)
    assert vm.mmio.read(cfg(slot, lib.PCI_VENDOR_ID), 2) == VIRTIO_VENDOR


def test_each_arch_declares_its_mechanism():
    x86, arm64 = FakeVm(), FakeVm()
    PciBus(x86, *MMIO, X86.PCI_CONFIG)
    assert x86.pio.find(CONFIG_DATA) is not None and x86.mmio.find(ECAM) is None
    PciBus(arm64, *MMIO, Arm64.PCI_CONFIG)
    assert arm64.mmio.find(PCI_ECAM) is not None and arm64.pio.find(CONFIG_DATA) is None


class OwnAccess:
    """An arch's own way (powerpc's firmware calls, say): the bus leaves
    the guest's address spaces to it."""

    def __init__(self) -> None:
        self.buses = []

    def attach(self, bus: PciBus) -> None:
        self.buses.append(bus)


def test_an_arch_of_its_own_gets_neither_ports_nor_ecam(vm):
    own = OwnAccess()
    bus = PciBus(vm, *MMIO, own)
    assert own.buses == [bus]
    assert vm.pio.find(CONFIG_DATA) is None and vm.mmio.find(ECAM) is None


class TranslatingBridge:
    """A host bridge that shows the CPU its BAR window elsewhere than the
    PCI bus addresses the BARs hold (sPAPR's)."""
    OFFSET = 0x2000_0000_0000 - 0x8000_0000

    def attach(self, bus: PciBus) -> None:
        bus.mem_offset = self.OFFSET


def test_bars_behind_a_translating_bridge(vm):
    cpu = 0x2000_0000_0000
    bus = PciBus(vm, cpu, cpu + 0x8000_0000, TranslatingBridge())
    dev = PciDevice(VIRTIO_VENDOR, NET_DEVICE, CLASS_NET)
    dev.add_bar(0x1000, False, Regs())
    dev.set_irq(4096)                       # an XICS source: past the config byte
    bus.add(dev)
    bar0 = lib.PCI_BASE_ADDRESS_0
    assert dev.read_config(lib.PCI_INTERRUPT_LINE, 1) == 0xFF and dev.irq_line == 4096
    assert dev.read_config(bar0, 4) == dev.bars[0].addr - TranslatingBridge.OFFSET
    assert vm.mmio.find(dev.bars[0].addr)[1] is dev.bars[0].dev
    dev.write_config(bar0, 4, 0x9000_0000)
    assert dev.read_config(bar0, 4) == 0x9000_0000
    assert vm.mmio.find(0x9000_0000 + TranslatingBridge.OFFSET)[1] is dev.bars[0].dev
