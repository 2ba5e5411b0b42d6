"""A guest moving virtio-pci BARs through the configuration ports, on a
real VM: the doorbells follow the BAR through KVM's ioeventfds, and no
number of moves makes lkvm hold more fds."""

import dataclasses
import os
import random

import pytest

from hw.pci import CONFIG_ADDRESS, CONFIG_DATA, CONFIG_ENABLE
from hw.vesa import Vesa
from include.uapi import lib
from kvm.config import Config
from tests.fakevm import attached, kvm_vm

MOVES = 200         # each move costs KVM two ioctls per queue, ~8 ms here
ELSEWHERE = 0xD8000000      # free in the 32-bit MMIO gap
IO_ELSEWHERE = 0x7000       # and in port space
CONFIG = Config(name="bars", cpus=1, ram_mib=16)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def vm(kvm_available):
    with kvm_vm(CONFIG) as vm:
        yield vm


@pytest.mark.parametrize("transport", ["pci", "pci-legacy"])
def test_moving_bar0_leaks_no_eventfd(vm, transport):
    cfg = dataclasses.replace(CONFIG, console="virtio", rng=True, transport=transport)
    with attached(vm, cfg) as ctx:
        pci = ctx.devices[0].transport          # hvc0: two queues, two doorbells
        slot = ctx.pci.slots.index(pci)
        bar = lib.PCI_BASE_ADDRESS_0
        homes = [pci.bars[0].addr, IO_ELSEWHERE if pci.bars[0].io else ELSEWHERE]
        eventfds = [efd for efd, _ in pci.notifiers]
        before = open_fds()
        for n in range(MOVES):
            vm.pio.write(CONFIG_ADDRESS, 4, CONFIG_ENABLE | slot << 11 | bar)
            vm.pio.write(CONFIG_DATA, 4, homes[(n + 1) % 2])
        after = open_fds()
        assert pci.bars[0].addr == homes[MOVES % 2]
        assert after == before, f"{after - before} fds more after {MOVES} moves"
        assert [efd for efd, _ in pci.notifiers] == eventfds
        home = pci.bars[0]
        assert all(home.addr <= p[0] < home.addr + home.size for _, p in pci.notifiers)


# Decoding: a BAR's range is on the bus only while its space is enabled.
SEED, STEPS = 12, 400
DECODE = {True: lib.PCI_COMMAND_IO, False: lib.PCI_COMMAND_MEMORY}


def config_write(vm, slot: int, reg: int, value: int, size: int = 4) -> None:
    vm.pio.write(CONFIG_ADDRESS, 4, CONFIG_ENABLE | slot << 11 | reg & 0xFC)
    vm.pio.write(CONFIG_DATA + (reg & 3), size, value)


def config_read(vm, slot: int, reg: int) -> int:
    vm.pio.write(CONFIG_ADDRESS, 4, CONFIG_ENABLE | slot << 11 | reg)
    return vm.pio.read(CONFIG_DATA, 4)


def bar_reg(index: int) -> int:
    return lib.PCI_BASE_ADDRESS_0 + 4 * index


def two_devices(vm, transport: str):
    """The virtio console's and rng's transports, and their slots."""
    cfg = dataclasses.replace(CONFIG, console="virtio", rng=True, transport=transport)
    return attached(vm, cfg)


def check_consistent(vm, ctx) -> None:
    """What the bus, the BARs and KVM's doorbells say agrees: a decoding
    BAR is on the bus where it says, with BAR 0's doorbells inside it;
    one that does not decode has no doorbells with KVM."""
    for pci in filter(None, ctx.pci.slots):
        for index, bar in enumerate(pci.bars):
            bus = vm.pio if bar.io else vm.mmio
            if bar.decoded is not None:
                assert bus.find(bar.decoded) == (bar.decoded, bar.dev)
                assert pci.decodes(bar) and bar.decoded == bar.addr
            if index == 0 and hasattr(pci, "notifiers"):
                for _, point in pci.notifiers:
                    if bar.decoded is None:
                        assert point is None
                    else:
                        assert bar.decoded <= point[0] < bar.decoded + bar.size


@pytest.mark.parametrize("transport", ["pci", "pci-legacy"])
def test_swap_through_each_others_address_with_decoding_off(vm, transport):
    """What Linux does when it reassigns: decoding off, each BAR 0 moved
    to where the other one is, decoding on."""
    with two_devices(vm, transport) as ctx:
        a, b = (d.transport for d in ctx.devices[:2])
        slots = [ctx.pci.slots.index(a), ctx.pci.slots.index(b)]
        homes = [a.bars[0].addr, b.bars[0].addr]
        command = config_read(vm, slots[0], lib.PCI_COMMAND) & 0xFFFF
        for slot in slots:
            config_write(vm, slot, lib.PCI_COMMAND, 0, size=2)
        config_write(vm, slots[0], bar_reg(0), homes[1])
        config_write(vm, slots[1], bar_reg(0), homes[0])
        for slot in slots:
            config_write(vm, slot, lib.PCI_COMMAND, command, size=2)
        bus = vm.pio if a.bars[0].io else vm.mmio
        assert bus.find(homes[1]) == (homes[1], a.bars[0].dev)
        assert bus.find(homes[0]) == (homes[0], b.bars[0].dev)
        assert config_read(vm, slots[0], bar_reg(0)) & ~3 == homes[1]
        check_consistent(vm, ctx)


@pytest.mark.parametrize("transport", ["pci", "pci-legacy"])
def test_decoding_off_takes_the_range_and_doorbells_away(vm, transport):
    with two_devices(vm, transport) as ctx:
        a = ctx.devices[0].transport
        slot, home = ctx.pci.slots.index(a), a.bars[0].addr
        bus = vm.pio if a.bars[0].io else vm.mmio
        config_write(vm, slot, lib.PCI_COMMAND, 0, size=2)
        assert bus.find(home) is None and a.bars[0].decoded is None
        check_consistent(vm, ctx)
        config_write(vm, slot, lib.PCI_COMMAND, DECODE[a.bars[0].io], size=2)
        assert bus.find(home) == (home, a.bars[0].dev)
        check_consistent(vm, ctx)


def test_an_io_bar_keeps_16_bits(vm):
    """Ports are 16 bits: a legacy BAR 0 written above 0xFFFF reads back
    and decodes with its upper half 0, doorbells included."""
    with two_devices(vm, "pci-legacy") as ctx:
        a = ctx.devices[0].transport
        slot = ctx.pci.slots.index(a)
        config_write(vm, slot, bar_reg(0), 0xABCD0000 | IO_ELSEWHERE)
        assert config_read(vm, slot, bar_reg(0)) == IO_ELSEWHERE | lib.PCI_BASE_ADDRESS_SPACE_IO
        assert a.bars[0].decoded == IO_ELSEWHERE
        assert vm.pio.find(IO_ELSEWHERE) == (IO_ELSEWHERE, a.bars[0].dev)
        check_consistent(vm, ctx)


def test_overlap_while_decoding_leaves_the_newcomer_dark(vm):
    """Enabled onto another decoding BAR, a BAR does not decode: the range
    stays with the device that has it.  Once that one moves away, the
    dark BAR takes its address, so a swap with decoding on works too."""
    with two_devices(vm, "pci") as ctx:
        a, b = (d.transport for d in ctx.devices[:2])
        slots = [ctx.pci.slots.index(a), ctx.pci.slots.index(b)]
        homes = [a.bars[0].addr, b.bars[0].addr]
        config_write(vm, slots[0], bar_reg(0), homes[1])
        assert a.bars[0].decoded is None and b.bars[0].decoded == homes[1]
        assert vm.mmio.find(homes[1]) == (homes[1], b.bars[0].dev)
        assert config_read(vm, slots[0], bar_reg(0)) == homes[1]   # what the guest wrote
        check_consistent(vm, ctx)
        config_write(vm, slots[1], bar_reg(0), homes[0])
        assert (a.bars[0].decoded, b.bars[0].decoded) == (homes[1], homes[0])
        check_consistent(vm, ctx)


def test_enabling_onto_a_decoding_range_is_refused(vm):
    with two_devices(vm, "pci") as ctx:
        a, b = (d.transport for d in ctx.devices[:2])
        slots = [ctx.pci.slots.index(a), ctx.pci.slots.index(b)]
        config_write(vm, slots[0], lib.PCI_COMMAND, 0, size=2)
        config_write(vm, slots[0], bar_reg(0), b.bars[0].addr)
        config_write(vm, slots[0], lib.PCI_COMMAND, lib.PCI_COMMAND_MEMORY, size=2)
        assert a.bars[0].decoded is None and a.bars[1].decoded == a.bars[1].addr
        assert vm.mmio.find(b.bars[0].addr) == (b.bars[0].addr, b.bars[0].dev)
        check_consistent(vm, ctx)


@pytest.mark.parametrize("transport", ["pci", "pci-legacy"])
def test_hostile_bar_and_command_writes(vm, transport):
    """Command writes of every width, BAR writes while enabled onto the
    other devices' BARs, 0, all ones, the MSI-X BAR written as if it
    were BAR 0's upper half, BARs that do not exist: nothing breaks, the
    bus and KVM's doorbells stay consistent, no fd is left behind."""
    rng = random.Random(SEED)
    with two_devices(vm, transport) as ctx:
        devices = [d.transport for d in ctx.devices[:2]]
        slots = [ctx.pci.slots.index(pci) for pci in devices]
        homes = {slot: [bar.addr for bar in pci.bars]
                 for pci, slot in zip(devices, slots, strict=True)}
        addrs = [addr for placed in homes.values() for addr in placed]
        before = open_fds()
        for _ in range(STEPS):
            slot = rng.choice(slots)
            if rng.random() < 0.3:
                size = rng.choice([1, 2, 4])
                config_write(vm, slot, lib.PCI_COMMAND, rng.getrandbits(8 * size), size)
                continue
            value = rng.choice([*addrs, 0, 0xFFFFFFFF, 1, rng.getrandbits(32),
                                rng.getrandbits(16)])
            config_write(vm, slot, bar_reg(rng.randrange(lib.PCI_STD_NUM_BARS)), value)
        check_consistent(vm, ctx)
        assert open_fds() == before
        # Put back and turned on, every BAR decodes again.
        for slot, placed in homes.items():
            for index, addr in enumerate(placed):
                config_write(vm, slot, bar_reg(index), addr)
            config_write(vm, slot, lib.PCI_COMMAND,
                         lib.PCI_COMMAND_IO | lib.PCI_COMMAND_MEMORY, size=2)
        assert all(bar.decoded == bar.addr for pci in devices for bar in pci.bars)
        check_consistent(vm, ctx)


def test_framebuffer_slot_follows_decoding(vm):
    """The VESA BAR is a memory slot, not a bus range: decoding off
    deletes the slot, on puts it back where the BAR now is; KVM refuses
    neither."""
    with two_devices(vm, "pci") as ctx:
        fb = Vesa(vm)
        fb.plug()
        slot = ctx.pci.slots.index(fb)
        config_write(vm, slot, lib.PCI_COMMAND, 0, size=2)
        assert fb.bars[fb.bar].decoded is None
        config_write(vm, slot, bar_reg(fb.bar), ELSEWHERE)
        config_write(vm, slot, lib.PCI_COMMAND, lib.PCI_COMMAND_MEMORY, size=2)
        assert fb.bars[fb.bar].decoded == fb.addr == ELSEWHERE


def test_framebuffer_moved_onto_ram_is_dark_not_fatal(vm, capsys):
    """KVM refuses a slot over the guest's RAM: the framebuffer is then
    nowhere, the guest's RAM stays its RAM, and lkvm runs on, saying so
    once however often the guest does it."""
    with two_devices(vm, "pci") as ctx:
        fb = Vesa(vm)
        fb.plug()
        slot = ctx.pci.slots.index(fb)
        for _ in range(3):
            config_write(vm, slot, bar_reg(fb.bar), 0x400000)      # its RAM
            config_write(vm, slot, bar_reg(fb.bar), ELSEWHERE)
        config_write(vm, slot, bar_reg(fb.bar), 0x400000)
        assert capsys.readouterr().err.count("moved the framebuffer onto its memory") == 1
        config_write(vm, slot, bar_reg(fb.bar), ELSEWHERE)         # and back: it works again
        assert fb.bars[fb.bar].decoded == ELSEWHERE
