"""virtio-pci on ppc64, behind the sPAPR PCI host bridge, on a VM without
KVM: configuration space through the RTAS calls a pseries kernel makes
(fed what a hostile guest can pass: BUIDs, sizes, offsets, slots), BARs
whose PCI bus addresses the bridge maps far above RAM, INTA# on an XICS
source, and the device tree that describes them, read back by dtc."""

import struct
import subprocess

import pytest

from cli.cmd import load_builtin
from hw.pci import INTEL_VENDOR, PciBus
from include.uapi import lib
from kvm import arch as arch_loader
from kvm.errors import LkvmError
from kvm.memory import GuestMemory
from powerpc import dtb, phb, rtas, tce, xics
from powerpc.arch import Ppc64, _Services
from powerpc.layout import PCI_BUS_START, PCI_MMIO_END, PCI_MMIO_START, RTAS_SIZE
from tests.fakevm import FakeRouting, FakeVm
from tests.test_arm64 import cells, decompile
from virtio.pci import VIRTIO_VENDOR, VirtioPci
from virtio.rng import Rng
from virtio.setup import Context

run = load_builtin("run")

MIB = 1 << 20
BLOCK = 0x1000
U32 = 0xFFFFFFFF
OFFSET = PCI_MMIO_START - PCI_BUS_START
BUID_HI, BUID_LO = phb.BUID >> 32, phb.BUID & U32
RNG_SLOT = 1
PHB = f"pci@{phb.BUID:x}"


class Machine:
    """A ppc64 VM's PCI bus with virtio-rng in slot 1, and RTAS over it."""

    def __init__(self) -> None:
        self.vm = FakeVm()
        routing = FakeRouting()
        routing.lines = iter(Ppc64.LEGACY_IRQS)
        self.vm.pci = PciBus(self.vm, *Ppc64.PCI_MMIO, Ppc64.PCI_CONFIG)
        self.ctx = Context(self.vm, routing, lambda why: None, self.vm.pci,
                           Ppc64.VIRTIO_MMIO_START)
        self.rng = VirtioPci(Rng(self.vm.mem), self.ctx, modern=True)
        self.mem = GuestMemory([(0, 16 * MIB)])
        self.rtas = rtas.Rtas(self.mem, _Services(self.vm, None, None))

    def call(self, name: str, args: list[int], nret: int) -> list[int]:
        """An RTAS call as the guest makes it: the results, the status signed."""
        self.mem.write(BLOCK, struct.pack(f">{3 + len(args)}I", rtas.TOKENS[name], len(args),
                                          nret, *args))
        assert self.rtas.call(BLOCK) == 0
        rets = struct.unpack(f">{nret}I", self.mem.read(BLOCK + 12 + 4 * len(args), 4 * nret))
        return [rets[0] - (rets[0] >> 31 << 32), *rets[1:]]

    def read(self, slot: int, reg: int, size: int = 4, buid: int = phb.BUID) -> list[int]:
        return self.call("ibm,read-pci-config",
                         [config_addr(slot, reg), buid >> 32, buid & U32, size], 2)

    def write(self, slot: int, reg: int, value: int, size: int = 4) -> list[int]:
        return self.call("ibm,write-pci-config",
                         [config_addr(slot, reg), BUID_HI, BUID_LO, size, value], 1)


def config_addr(slot: int, reg: int, bus: int = 0, fn: int = 0) -> int:
    """The kernel's rtas_config_addr()."""
    return (reg & 0xF00) << 20 | bus << 16 | slot << 11 | fn << 8 | reg & 0xFF


@pytest.fixture
def m():
    m = Machine()
    yield m
    m.vm.close()


def test_configuration_space_through_rtas(m: Machine) -> None:
    assert m.read(0, lib.PCI_VENDOR_ID, 2) == [0, INTEL_VENDOR]
    assert m.read(RNG_SLOT, lib.PCI_VENDOR_ID, 2) == [0, VIRTIO_VENDOR]
    assert m.read(RNG_SLOT, lib.PCI_DEVICE_ID, 2)[1] == 0x1040 + lib.VIRTIO_ID_RNG
    # The calls without a BUID reach the same bridge.
    assert m.call("read-pci-config", [config_addr(RNG_SLOT, 0), 4], 2) == m.read(RNG_SLOT, 0)
    assert m.call("write-pci-config", [config_addr(RNG_SLOT, lib.PCI_COMMAND), 2,
                                       lib.PCI_COMMAND_MEMORY], 1) == [0]
    assert m.read(RNG_SLOT, lib.PCI_COMMAND, 2)[1] == lib.PCI_COMMAND_MEMORY
    # The capability list, as virtio-pci's driver walks it.
    status, first = m.read(RNG_SLOT, lib.PCI_CAPABILITY_LIST, 1)
    assert status == 0 and first >= lib.PCI_STD_HEADER_SIZEOF
    assert m.read(RNG_SLOT, first, 1)[1] in (lib.PCI_CAP_ID_VNDR, lib.PCI_CAP_ID_MSIX)
    # The extended space reads as an empty capability list.
    assert m.read(RNG_SLOT, lib.PCI_CFG_SPACE_SIZE, 4) == [0, 0]
    assert m.write(RNG_SLOT, lib.PCI_CFG_SPACE_SIZE, U32) == [0]


def test_bars_hold_bus_addresses_the_bridge_maps_high(m: Machine) -> None:
    bar0 = m.read(RNG_SLOT, lib.PCI_BASE_ADDRESS_0)[1]
    assert PCI_BUS_START <= bar0 < PCI_BUS_START + (PCI_MMIO_END - PCI_MMIO_START)
    assert m.rng.bars[0].addr == bar0 + OFFSET
    assert m.vm.mmio.find(bar0 + OFFSET)[1] is m.rng.bars[0].dev
    # Sized, then moved by the guest: the CPU sees it at its new place.
    assert m.write(RNG_SLOT, lib.PCI_BASE_ADDRESS_0, U32) == [0]
    assert m.read(RNG_SLOT, lib.PCI_BASE_ADDRESS_0)[1] == -m.rng.bars[0].size & U32
    moved = 0xC0000000
    assert m.write(RNG_SLOT, lib.PCI_BASE_ADDRESS_0, moved) == [0]
    assert m.read(RNG_SLOT, lib.PCI_BASE_ADDRESS_0)[1] == moved
    assert m.vm.mmio.find(moved + OFFSET)[1] is m.rng.bars[0].dev
    assert m.vm.mmio.find(bar0 + OFFSET) is None


def test_intx_is_an_xics_source(m: Machine) -> None:
    """XICS numbers its sources from 4096: the config byte cannot hold it."""
    assert m.rng.irq_line == xics.IRQ_BASE
    assert m.read(RNG_SLOT, lib.PCI_INTERRUPT_LINE, 1)[1] == 0xFF
    assert m.read(RNG_SLOT, lib.PCI_INTERRUPT_PIN, 1)[1] == 1


HW, PARAM = rtas.RTAS_HARDWARE_ERROR, rtas.RTAS_PARAMETER_ERROR


@pytest.mark.parametrize("addr, buid, size, status", [
    (config_addr(RNG_SLOT, 0), phb.BUID + 1, 4, PARAM),     # no such bridge
    (config_addr(RNG_SLOT, 0), 0, 4, PARAM),
    (config_addr(RNG_SLOT, 0), (1 << 64) - 1, 4, PARAM),
    (config_addr(RNG_SLOT, 0), phb.BUID, 3, PARAM),         # sizes
    (config_addr(RNG_SLOT, 0), phb.BUID, 0, PARAM),
    (config_addr(RNG_SLOT, 0), phb.BUID, 8, PARAM),
    (config_addr(RNG_SLOT, 0), phb.BUID, U32, PARAM),
    (config_addr(RNG_SLOT, 2), phb.BUID, 4, PARAM),         # unaligned
    (config_addr(RNG_SLOT, 0x101), phb.BUID, 2, PARAM),
    (config_addr(RNG_SLOT, 0) | 1 << 24, phb.BUID, 4, PARAM),   # reserved bits
    (U32, phb.BUID, 1, PARAM),
    (config_addr(7, 0), phb.BUID, 4, HW),                   # an empty slot
    (config_addr(31, 0xFFC), phb.BUID, 4, HW),
    (config_addr(RNG_SLOT, 0, bus=1), phb.BUID, 4, HW),     # bus 0 only
    (config_addr(RNG_SLOT, 0, fn=1), phb.BUID, 4, HW),      # function 0 only
])
def test_bad_config_accesses(m: Machine, addr: int, buid: int, size: int,
                             status: int) -> None:
    before = bytes(m.rng.config)
    assert m.call("ibm,read-pci-config", [addr, buid >> 32, buid & U32, size], 2)[0] == status
    assert m.call("ibm,write-pci-config", [addr, buid >> 32, buid & U32, size, U32], 1) == \
        [status]
    assert bytes(m.rng.config) == before


def test_config_access_with_no_bus() -> None:
    assert phb.read_config(None, phb.BUID, 0, 4) == (HW, U32)
    assert phb.write_config(None, phb.BUID, 0, 4, 0) == HW


@pytest.mark.parametrize("transport, why", [
    ("pci-legacy", "its registers are I/O ports"),   # the bridge has no I/O space
    ("mmio", "ppc64 .pseries. kernels find no"),    # powerpc populates no mmio nodes
    ("mmio-legacy", "ppc64 .pseries. kernels find no"),
])
def test_unreachable_transports(transport: str, why: str, monkeypatch) -> None:
    """Asked for by --virtio-transport or by one NIC's trans=."""
    monkeypatch.setattr(arch_loader, "load", lambda: Ppc64)
    for argv, option in [(["--virtio-transport", transport], "--virtio-transport "),
                         (["-n", "mode=user", "-n", f"mode=user,trans={transport}"],
                          "-n trans=")]:
        with pytest.raises(LkvmError, match=f"^{option}{transport}: {why}.*; use pci$"):
            run.configure(["-k", "/nonexistent", *argv])


def tree(m: Machine) -> bytes:
    return dtb.build(dtb.Machine(ram=((0, 256 * MIB),), cpus=1, cmdline="", tokens=rtas.TOKENS,
                                 rtas=(0xFFEF000, RTAS_SIZE), dtb=0xFFF0000, pci=m.vm.pci))


def test_dt_host_bridge(m: Machine) -> None:
    blob = tree(m)
    dt = decompile(blob)
    bridge = dt[PHB]
    assert bridge["device_type"] == '"pci"' and bridge["compatible"] == '"IBM,Logical_PHB"'
    assert cells(bridge["reg"])[:2] == [BUID_HI, BUID_LO]
    assert cells(bridge["bus-range"]) == [0, 0]
    assert cells(bridge["ibm,pci-config-space-type"]) == [1]
    assert cells(bridge["ranges"]) == [phb.PCI_MEM32, 0, PCI_BUS_START, PCI_MMIO_START >> 32, 0,
                                       0, PCI_MMIO_END - PCI_MMIO_START]
    assert cells(bridge["interrupt-map"]) == [RNG_SLOT << 11, 0, 0, 1, xics.PHANDLE,
                                              xics.IRQ_BASE, 1]
    assert cells(bridge["interrupt-map-mask"]) == [0xF800, 0, 0, 7]
    # The DMA window pseries' code looks for: LIOBN, bus address 0, size.
    assert cells(bridge["ibm,#dma-address-cells"]) == cells(bridge["ibm,#dma-size-cells"]) == [2]
    assert cells(bridge["ibm,dma-window"]) == [tce.LIOBN, 0, 0, 0, tce.WINDOW_SIZE]
    assert cells(bridge["ibm,pe-total-#msi"]) == [0]       # INTx only: phb.py says why
    # The kernel takes its devices from these nodes; lkvm's own host
    # bridge in slot 0 is not one of them.
    assert f"{PHB}/pci@0" not in dt
    dev = dt[f"{PHB}/pci@{RNG_SLOT}"]
    assert cells(dev["reg"]) == [RNG_SLOT << 11, 0, 0, 0, 0]
    assert cells(dev["vendor-id"]) == [VIRTIO_VENDOR]
    assert cells(dev["device-id"]) == [0x1040 + lib.VIRTIO_ID_RNG]
    assert cells(dev["class-code"]) == [m.rng.read_config(lib.PCI_CLASS_REVISION, 4) >> 8]
    assert cells(dev["interrupts"]) == [1]
    bars = cells(dev["assigned-addresses"])
    assert len(bars) == 5 * len(m.rng.bars)
    for i, bar in enumerate(m.rng.bars):
        hi, addr_hi, addr_lo, size_hi, size_lo = bars[5 * i:5 * i + 5]
        assert hi == 0x82000000 | RNG_SLOT << 11 | lib.PCI_BASE_ADDRESS_0 + 4 * i
        assert addr_hi << 32 | addr_lo == bar.addr - OFFSET
        assert size_hi << 32 | size_lo == bar.size
    # dtc's own checks of the PCI binding find nothing to say.
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null"], input=blob,
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and b"pci" not in r.stderr, r.stderr.decode()
