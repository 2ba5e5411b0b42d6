"""A guest moving virtio-pci BARs through the configuration ports, on a
real VM: the doorbells follow the BAR through KVM's ioeventfds, and no
number of moves makes lkvm hold more fds."""

import dataclasses
import os

import pytest

from hw.pci import CONFIG_ADDRESS, CONFIG_DATA, CONFIG_ENABLE
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
