"""Interrupt lines and MSI routes.

KVM_SET_GSI_ROUTING replaces the whole table, so the routes of the
in-kernel interrupt controllers (from the arch) are kept here beside the
MSI routes lkvm adds, and the whole table is written on each change.
MSI-X vectors are GSIs past the controllers' pins; a device raises one by
writing the irqfd bound to it.
"""

import threading

from include.uapi import ffi, lib
from kvm.ioctl import ioctl


class IrqRouting:
    def __init__(self, vm: object) -> None:
        self.vm = vm
        self.lock = threading.Lock()
        self.chip_routes = vm.arch.irqchip_routes()  # [(gsi, irqchip, pin)]
        self.next_gsi = max((gsi for gsi, _, _ in self.chip_routes), default=-1) + 1
        self.msi: dict[int, tuple[int, int]] = {}    # gsi -> (address, data)
        self.legacy_lines = list(vm.arch.LEGACY_IRQS)
        self.next_line = 0
        self.msi_routes = vm.arch.MSI_ROUTES

    def alloc_line(self) -> int:
        """A legacy interrupt line for a device; lines are shared, as PCI
        INTx allows, once all are taken."""
        line = self.legacy_lines[self.next_line % len(self.legacy_lines)]
        self.next_line += 1
        return line

    def add_msi(self) -> int:
        """A new GSI with a disabled MSI route, and its irqfd."""
        with self.lock:
            gsi = self.next_gsi
            self.next_gsi += 1
            self.msi[gsi] = (0, 0)
            self._commit()
        return gsi

    def set_msi(self, gsi: int, address: int, data: int) -> None:
        with self.lock:
            if self.msi.get(gsi) != (address, data):
                self.msi[gsi] = (address, data)
                self._commit()

    def _commit(self) -> None:
        if not self.msi_routes:
            return  # KVM would refuse the table (ENOTTY), and the guest has no MSI
        n = len(self.chip_routes) + len(self.msi)
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_irq_routing") +
                      n * ffi.sizeof("struct kvm_irq_routing_entry"))
        table = ffi.cast("struct kvm_irq_routing *", buf)
        table.nr = n
        for i, (gsi, chip, pin) in enumerate(self.chip_routes):
            e = table.entries[i]
            e.gsi, e.type = gsi, lib.KVM_IRQ_ROUTING_IRQCHIP
            e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
        for i, (gsi, (address, data)) in enumerate(self.msi.items(), len(self.chip_routes)):
            e = table.entries[i]
            e.gsi, e.type = gsi, lib.KVM_IRQ_ROUTING_MSI
            e.u.msi.address_lo, e.u.msi.address_hi = address & 0xFFFFFFFF, address >> 32
            e.u.msi.data = data
        ioctl(self.vm.fd, lib.KVM_SET_GSI_ROUTING, table)
