"""What vhost signals, on a real VM: a live MSI-X vector's irqfd (the
call lkvm hands vhost) raises the interrupt in the guest's local APIC by
KVM's GSI routing alone, with the message the driver wrote last, and a
masked vector has none to hand out."""

import dataclasses
import os
import time

import pytest

from include.uapi import ffi, lib
from kvm.config import Config
from kvm.ioctl import ioctl
from kvm.vm import Vm
from tests.fakevm import attached, kvm_vm

CONFIG = dataclasses.replace(Config(name="irqfd", cpus=1, ram_mib=16), rng=True)
MSI_ADDR = 0xFEE00000       # to APIC 0, physical destination, fixed delivery
APIC_SVR, APIC_IRR = 0xF0, 0x200
APIC_SW_ENABLE = 0x100
ENTRY = lib.PCI_MSIX_ENTRY_SIZE


@pytest.fixture
def vm(kvm_available):
    with kvm_vm(CONFIG) as vm:
        yield vm


def lapic(vm: Vm) -> object:
    state = ffi.new("struct kvm_lapic_state *")
    ioctl(vm.vcpus[0].fd, lib.KVM_GET_LAPIC, state)
    return state


def register(state: object, offset: int) -> int:
    return int.from_bytes(ffi.buffer(state.regs)[offset:offset + 4], "little")


def requested(vm: Vm, vector: int) -> bool:
    return bool(register(lapic(vm), APIC_IRR + 0x10 * (vector // 32)) >> vector % 32 & 1)


def wait_requested(vm: Vm, vector: int) -> bool:
    """KVM may inject an irqfd's interrupt from a worker: look for a while."""
    deadline = time.monotonic() + 5
    while not requested(vm, vector):
        if time.monotonic() > deadline:
            return False
    return True


def test_a_live_vectors_irqfd_reaches_the_local_apic(vm):
    state = lapic(vm)
    svr = register(state, APIC_SVR) | APIC_SW_ENABLE        # as the guest's kernel does
    ffi.buffer(state.regs)[APIC_SVR:APIC_SVR + 4] = svr.to_bytes(4, "little")
    ioctl(vm.vcpus[0].fd, lib.KVM_SET_LAPIC, state)
    with attached(vm, CONFIG) as ctx:
        (pci,) = [d.transport for d in ctx.devices if d.name == "rng"]
        msix = pci.msix
        pci.dev.queues[0].vector = 0
        msix.write(lib.PCI_MSIX_ENTRY_LOWER_ADDR, 4, MSI_ADDR)
        msix.write(lib.PCI_MSIX_ENTRY_DATA, 4, 0x41)
        msix.write_control(lib.PCI_MSIX_FLAGS_ENABLE)
        assert pci.queue_irqfd(0) is None                   # masked
        msix.write(lib.PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0)
        fd = pci.queue_irqfd(0)
        assert fd is not None and not requested(vm, 0x41)
        os.eventfd_write(fd, 1)                             # what vhost does
        assert wait_requested(vm, 0x41)
        # The driver moves the vector: what vhost signals follows it.
        msix.write(lib.PCI_MSIX_ENTRY_DATA, 4, 0x62)
        assert pci.queue_irqfd(0) == fd
        os.eventfd_write(fd, 1)
        assert wait_requested(vm, 0x62)
