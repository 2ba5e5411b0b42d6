"""VMs for device tests.  FakeVm has no KVM: real buses and guest memory,
and interrupts, routes and eventfds recorded instead of handed to the
kernel.  kvm_vm() is a real x86 VM that runs no guest code, for what only
KVM checks: ioeventfds, irqfds, GSI routes, the local APIC."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from hw.pci import PciBus
from kvm.bus import Bus
from kvm.config import Config
from kvm.kvm import Kvm
from kvm.vm import Vm
from virtio import setup
from virtio.mock import mock_memory
from virtio.setup import Context
from x86.arch import X86


class FakeRouting:
    def __init__(self) -> None:
        self.msi: dict[int, tuple[int, int]] = {}
        self.lines = iter(X86.LEGACY_IRQS)

    def alloc_line(self) -> int:
        return next(self.lines)

    def add_msi(self) -> int:
        gsi = 24 + len(self.msi)
        self.msi[gsi] = (0, 0)
        return gsi

    def set_msi(self, gsi: int, address: int, data: int) -> None:
        self.msi[gsi] = (address, data)


class FakeVm:
    arch = X86()

    def __init__(self) -> None:
        self.mem = mock_memory()
        self.pio, self.mmio = Bus("ioport"), Bus("mmio")
        self.lines: dict[int, int] = {}
        self.irqfds: dict[int, int] = {}      # eventfd -> gsi
        self.ioeventfds: dict[int, tuple] = {}
        self.virtio_mmio: list[tuple[int, int, int]] = []
        self.fds: list[int] = []

    def _eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.fds.append(fd)
        return fd

    def irq_line(self, irq: int, level: int) -> None:
        self.lines[irq] = level

    def irqfd(self, gsi: int) -> int:
        fd = self._eventfd()
        self.irqfds[fd] = gsi
        return fd

    def fired(self) -> list[int]:
        """GSIs raised through irqfds since the last look."""
        out = []
        for fd, gsi in self.irqfds.items():
            try:
                out += [gsi] * os.eventfd_read(fd)
            except BlockingIOError:
                pass
        return sorted(out)

    def ioeventfd(self, addr: int, length: int, pio: bool, datamatch: int | None = None,
                  efd: int | None = None) -> int:
        fd = self._eventfd() if efd is None else efd
        self.ioeventfds[fd] = (addr, length, pio, datamatch)
        return fd

    def remove_ioeventfd(self, efd: int, addr: int, length: int, pio: bool,
                         datamatch: int | None = None) -> None:
        del self.ioeventfds[efd]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def context(vm: FakeVm) -> Context:
    return Context(vm, FakeRouting(), lambda why: None,
                   PciBus(vm, *X86.PCI_MMIO, X86.PCI_CONFIG), X86.VIRTIO_MMIO_START)


@contextmanager
def kvm_vm(config: Config) -> Iterator[Vm]:
    """A real VM made as `config` says, closed afterwards."""
    kvm = Kvm()
    try:
        vm = Vm(kvm, X86(), config)
        try:
            yield vm
        finally:
            vm.close()
    finally:
        kvm.close()


@contextmanager
def attached(vm: Vm, config: Config) -> Iterator[Context]:
    """The virtio devices `config` asks for on `vm`, taken down afterwards."""
    ctx = setup.attach(vm, config, lambda data: None)
    try:
        yield ctx
    finally:
        ctx.exit()
