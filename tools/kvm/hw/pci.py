"""A PCI bus: configuration space reached the way the arch declares
(mechanism #1 at 0xCF8/0xCFC on x86, ECAM, a window of guest physical
memory, on arm64), a host bridge at 00:00.0, BARs placed by lkvm (the guest may size and move
them), and the MSI-X capability with its table and pending bits.

Linux booted with `pci=conf1` finds devices through the ports, keeps the
BAR addresses given here and takes the legacy IRQ from
PCI_INTERRUPT_LINE; on a device tree it finds the ECAM host bridge there.

A BAR decodes, its range is on the VM's bus, only while the command
register's I/O or memory space bit for it is set, as on real PCI: a
guest that reassigns BARs turns decoding off, moves them through each
other's addresses and turns it back on.  Two decoding ranges may not
overlap: a BAR that would is left dark (the range stays with the device
that holds it) until it moves somewhere free or the other one goes.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from include.uapi import lib
from kvm import msg
from kvm.bus import Bus
from kvm.errors import LkvmError

CONFIG_ADDRESS, CONFIG_DATA = 0xCF8, 0xCFC
CONFIG_PORT_SIZE = 4
CONFIG_ENABLE = 1 << 31           # PCI Local Bus 3.0 §3.2.2.3.2: the enable bit
MAX_SLOTS = 32
# ECAM (PCI Express Base 4.0 §7.2.2): 4 KiB of configuration space per
# function, the device number at bit 15; lkvm has bus 0 only, 1 MiB.
ECAM_SLOT_SHIFT, ECAM_FN_SHIFT = 15, 12
ECAM_FN_SIZE = 1 << ECAM_FN_SHIFT
ECAM_BUS_SIZE = MAX_SLOTS << ECAM_SLOT_SHIFT
IO_BAR_START = 0x6200             # where kvmtool's I/O BARs begin

# Not in any uapi header: PCI Code and ID Assignment Specification.
CLASS_BRIDGE_HOST = 0x060000
INTEL_VENDOR, I440FX_DEVICE = 0x8086, 0x1237  # a host bridge Linux knows

MSIX_ENTRY = lib.PCI_MSIX_ENTRY_SIZE
UNKNOWN_LINE = 0xFF               # PCI_INTERRUPT_LINE's "unknown or none"


# The command register's bit that turns a BAR's decoding on, by BAR kind.
DECODE_BIT = {True: lib.PCI_COMMAND_IO, False: lib.PCI_COMMAND_MEMORY}
# The address bits a BAR keeps, by kind: an I/O BAR decodes the 16 bits
# of port space and hardwires the rest to 0, as PCI lets such a device
# do, so no guest write puts its ports where no IN or OUT reaches them.
ADDRESS_BITS = {True: 0xFFFF, False: 0xFFFFFFFF}


@dataclass
class Bar:
    size: int
    io: bool
    dev: object                 # BusDevice for the range
    addr: int = 0               # the guest's (or lkvm's) address; 0: none
    decoded: int | None = None  # where its range is on the bus; None: not there


class PciDevice:
    """Type 0 configuration header; subclasses add BARs and capabilities
    before the bus places them."""

    def __init__(self, vendor: int, device: int, class_code: int, revision: int = 0,
                 subsys_vendor: int = 0, subsys_id: int = 0) -> None:
        self.config = bytearray(lib.PCI_CFG_SPACE_SIZE)
        self.bars: list[Bar] = []
        self.irq_line = 0
        self.bus: PciBus | None = None
        self._put(lib.PCI_VENDOR_ID, 2, vendor)
        self._put(lib.PCI_DEVICE_ID, 2, device)
        self._put(lib.PCI_REVISION_ID, 4, class_code << 8 | revision)
        self._put(lib.PCI_SUBSYSTEM_VENDOR_ID, 2, subsys_vendor)
        self._put(lib.PCI_SUBSYSTEM_ID, 2, subsys_id)
        self._cap_end = lib.PCI_STD_HEADER_SIZEOF
        # Called as (index, old, new) when a BAR's decoded address changes;
        # None is off the bus.
        self.on_bar_moved: list[Callable[[int, int | None, int | None], None]] = []

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def _get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def add_bar(self, size: int, io: bool, dev: object) -> int:
        """A BAR of `size` bytes (a power of two) decoded by `dev`."""
        self.bars.append(Bar(size, io, dev))
        return len(self.bars) - 1

    def add_capability(self, cap_id: int, body: bytes) -> int:
        """Append a capability; returns its offset in config space."""
        off = self._cap_end
        self.config[off] = cap_id
        self.config[off + 1] = self.config[lib.PCI_CAPABILITY_LIST]  # chain: newest first
        self.config[off + 2:off + 2 + len(body)] = body
        self.config[lib.PCI_CAPABILITY_LIST] = off
        self._put(lib.PCI_STATUS, 2, self._get(lib.PCI_STATUS, 2) | lib.PCI_STATUS_CAP_LIST)
        self._cap_end = (off + 2 + len(body) + 3) & ~3
        return off

    def set_irq(self, line: int) -> None:
        self.irq_line = line
        self.config[lib.PCI_INTERRUPT_PIN] = 1  # INTA#
        # A byte: lines past it (XICS numbers its sources from 4096) read
        # as 0xFF, "unknown", and the guest learns them from its firmware.
        self.config[lib.PCI_INTERRUPT_LINE] = min(line, UNKNOWN_LINE)

    # Configuration space as the guest sees it.
    def read_config(self, offset: int, size: int) -> int:
        return self._get(offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        bar = (offset - lib.PCI_BASE_ADDRESS_0) // 4
        if 0 <= bar < lib.PCI_STD_NUM_BARS and offset % 4 == 0 and size == 4:
            self._write_bar(bar, value)
        elif offset == lib.PCI_COMMAND:
            # A dword write here also covers the status register, whose
            # bits are the device's: only the command word is taken.
            width = min(size, 2)
            self._put(offset, width, value & ((1 << 8 * width) - 1))
            self.bus.decode(self)
        elif offset in (lib.PCI_INTERRUPT_LINE, lib.PCI_CACHE_LINE_SIZE, lib.PCI_LATENCY_TIMER):
            self._put(offset, size, value)
        else:
            self.write_capability(offset, size, value)

    def decodes(self, bar: Bar) -> bool:
        """Whether `bar` should be on the bus: its space enabled in the
        command register and an address given."""
        return bool(self._get(lib.PCI_COMMAND, 2) & DECODE_BIT[bar.io]) and bar.addr != 0

    def write_capability(self, offset: int, size: int, value: int) -> None:
        """Hook: writes to capability registers; the rest is read-only."""

    def _write_bar(self, index: int, value: int) -> None:
        reg = lib.PCI_BASE_ADDRESS_0 + 4 * index
        if index >= len(self.bars):
            return  # unimplemented BARs read as zero and stay so
        bar = self.bars[index]
        flags = lib.PCI_BASE_ADDRESS_SPACE_IO if bar.io else 0
        addr = value & ~(bar.size - 1) & ADDRESS_BITS[bar.io]
        self._put(reg, 4, addr | flags)  # all ones reads back as the size mask
        if value != 0xFFFFFFFF:         # sizing: the BAR decodes where it did
            if addr and not bar.io:
                addr += self.bus.mem_offset     # where the CPU sees it
            self.bus.move_bar(self, bar, addr)

    def place_bar(self, index: int, addr: int) -> None:
        """Put BAR `index` at `addr`, where the CPU sees it; the register
        holds its PCI bus address."""
        bar = self.bars[index]
        bar.addr = addr
        flags = lib.PCI_BASE_ADDRESS_SPACE_IO if bar.io else 0
        offset = 0 if bar.io or self.bus is None else self.bus.mem_offset
        self._put(lib.PCI_BASE_ADDRESS_0 + 4 * index, 4, addr - offset | flags)


class HostBridge(PciDevice):
    def __init__(self) -> None:
        super().__init__(INTEL_VENDOR, I440FX_DEVICE, CLASS_BRIDGE_HOST)


class ConfigAccess(Protocol):
    """How the guest reaches configuration space, as its arch declares it
    (the Arch contract's PCI_CONFIG)."""

    def attach(self, bus: "PciBus") -> None:
        """Put `bus`'s configuration space where the guest looks for it."""


class PciBus:
    """Bus 0 with up to 32 single-function devices."""

    def __init__(self, vm: object, mmio_start: int, mmio_end: int,
                 config: ConfigAccess) -> None:
        self.vm = vm
        self.slots: list[PciDevice | None] = [None] * MAX_SLOTS
        self.next_mmio, self.mmio_end = mmio_start, mmio_end
        self.next_io = IO_BAR_START
        # What a memory BAR's CPU address exceeds its PCI bus address by:
        # 0 but behind a host bridge that maps its window elsewhere (sPAPR's
        # PHB, which sets it as it attaches).
        self.mem_offset = 0
        self._moving = threading.Lock()
        config.attach(self)
        self.add(HostBridge())

    def add(self, dev: PciDevice) -> int:
        """Plug `dev` into the next free slot and place its BARs."""
        try:
            slot = self.slots.index(None)
        except ValueError:
            raise LkvmError(f"no free PCI slot: the bus has {MAX_SLOTS}") from None
        self.slots[slot] = dev
        dev.bus = self
        command = dev.read_config(lib.PCI_COMMAND, 2)
        for i, bar in enumerate(dev.bars):
            dev.place_bar(i, self._alloc(bar))
            self._space(bar).register(bar.addr, bar.size, bar.dev)
            bar.decoded = bar.addr
            command |= DECODE_BIT[bar.io]   # as firmware leaves a device it placed
        dev.config[lib.PCI_COMMAND:lib.PCI_COMMAND + 2] = command.to_bytes(2, "little")
        return slot

    def _space(self, bar: Bar) -> Bus:
        return self.vm.pio if bar.io else self.vm.mmio

    def _alloc(self, bar: Bar) -> int:
        """Naturally aligned, as BAR sizing requires."""
        if bar.io:
            addr = -(-self.next_io // bar.size) * bar.size
            self.next_io = addr + bar.size
        else:
            addr = -(-self.next_mmio // bar.size) * bar.size
            self.next_mmio = addr + bar.size
            if self.next_mmio > self.mmio_end:
                raise LkvmError("PCI devices do not fit in the 32-bit MMIO gap")
        return addr

    def move_bar(self, dev: PciDevice, bar: Bar, addr: int) -> None:
        """The guest placed a BAR itself; while it decodes, its range
        follows.  Changes are serialised so that a BAR's address, range
        and hooks agree."""
        with self._moving:
            bar.addr = addr
            self._decode(dev, dev.bars.index(bar))

    def decode(self, dev: PciDevice) -> None:
        """The guest wrote `dev`'s command register: each BAR's range goes
        on or off the bus as its space's bit says."""
        with self._moving:
            for index in range(len(dev.bars)):
                self._decode(dev, index)

    def _decode(self, dev: PciDevice, index: int) -> None:
        """Put `dev`'s BAR where dev.decodes() says, then, if that freed a
        range, let the BARs left dark by an overlap try again."""
        bar = dev.bars[index]
        old = bar.decoded
        self._place(dev, index)
        if old is not None and bar.decoded != old:
            for other in filter(None, self.slots):
                for i, dark in enumerate(other.bars):
                    if dark.decoded is None and other.decodes(dark):
                        self._place(other, i)

    def _place(self, dev: PciDevice, index: int) -> None:
        """The bus range moves in one step (lookups on other vCPUs see it
        at one place or the other); one that would overlap another
        decoding range leaves the bus instead, as the guest has two
        devices claiming one address and lkvm will not pick between them
        by accident.  Hooks learn the old and new decoded address, None
        when off the bus."""
        bar = dev.bars[index]
        old, new = bar.decoded, bar.addr if dev.decodes(bar) else None
        if new == old:
            return
        bus = self._space(bar)
        try:
            if old is None:
                bus.register(new, bar.size, bar.dev)
            elif new is None:
                bus.unregister(old)
            else:
                bus.move(old, new)
        except ValueError:
            msg.debug(f"PCI {bus.name} BAR at {new:#x}+{bar.size:#x} overlaps another "
                      "device's: it does not decode")
            if old is not None:
                bus.unregister(old)
            new = None
        if new == old:
            return
        bar.decoded = new
        for hook in dev.on_bar_moved:
            hook(index, old, new)

    def intx_slots(self) -> list[tuple[int, int]]:
        """(slot, line) of each device that raises INTA#, for the arch's
        description of the host bridge."""
        return [(slot, dev.irq_line) for slot, dev in enumerate(self.slots)
                if dev is not None and dev.config[lib.PCI_INTERRUPT_PIN]]


class Conf1:
    """Configuration mechanism #1 (x86): the guest latches a register's
    address at port 0xCF8 and moves its data through 0xCFC."""

    def attach(self, bus: PciBus) -> None:
        latch = _AddressPort()
        bus.vm.pio.register(CONFIG_ADDRESS, CONFIG_PORT_SIZE, latch)
        bus.vm.pio.register(CONFIG_DATA, CONFIG_PORT_SIZE, _DataPort(bus, latch))


@dataclass(frozen=True)
class Ecam:
    """Configuration space as memory at `base` (arm64's generic host
    bridge): 4 KiB per function."""
    base: int

    def attach(self, bus: PciBus) -> None:
        bus.vm.mmio.register(self.base, ECAM_BUS_SIZE, _Ecam(bus))


class _AddressPort:
    def __init__(self) -> None:
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        return self.address >> 8 * offset & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value


class _DataPort:
    def __init__(self, bus: PciBus, latch: _AddressPort) -> None:
        self.bus = bus
        self.latch = latch

    def _target(self) -> tuple[PciDevice, int] | None:
        a = self.latch.address
        bus, slot, fn = a >> 16 & 0xFF, a >> 11 & 0x1F, a >> 8 & 0x7
        if not a & CONFIG_ENABLE or bus or fn or self.bus.slots[slot] is None:
            return None
        return self.bus.slots[slot], a & 0xFC

    def read(self, offset: int, size: int) -> int:
        hit = self._target()
        if hit is None or offset + size > 4:
            return (1 << 8 * size) - 1
        return hit[0].read_config(hit[1] + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        hit = self._target()
        if hit is not None and offset + size <= 4:
            hit[0].write_config(hit[1] + offset, size, value)


class _Ecam:
    """Bus 0's configuration space as memory: an access names its slot,
    function and register in its offset.  Absent functions read as all
    ones (no device); the extended space past the first 256 bytes reads
    as zero, an empty capability list."""

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus

    def _target(self, offset: int, size: int) -> tuple[PciDevice, int] | None:
        dev = self.bus.slots[offset >> ECAM_SLOT_SHIFT]
        reg = offset % ECAM_FN_SIZE
        if dev is None or offset >> ECAM_FN_SHIFT & 7 or reg % size:
            return None
        return dev, reg

    def read(self, offset: int, size: int) -> int:
        hit = self._target(offset, size)
        if hit is None:
            return (1 << 8 * size) - 1
        dev, reg = hit
        return dev.read_config(reg, size) if reg < lib.PCI_CFG_SPACE_SIZE else 0

    def write(self, offset: int, size: int, value: int) -> None:
        hit = self._target(offset, size)
        if hit is not None and hit[1] < lib.PCI_CFG_SPACE_SIZE:
            hit[0].write_config(hit[1], size, value)
