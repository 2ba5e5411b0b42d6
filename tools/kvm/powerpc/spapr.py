"""The sPAPR machine as one vCPU's hypercalls see it (hcall.Platform): its
console, interrupt endianness, radix process table, devices, DMA window and
RTAS."""

from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm.ioctl import ioctl
from powerpc import vcpu as regs
from powerpc.console import HvConsole
from powerpc.rtas import Rtas
from powerpc.tce import TceTable

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm

# process_table's bit 63 (PATB_GR): the guest's MMU is radix.
PATB_GR = 1 << 63


def configure_mmu(vm_fd: int, process_table: int, gtse: bool) -> None:
    """KVM_PPC_CONFIGURE_V3_MMU for a radix guest; with GTSE the guest
    invalidates its own translations (tlbie) instead of asking us."""
    flags = lib.KVM_PPC_MMUV3_RADIX | (lib.KVM_PPC_MMUV3_GTSE if gtse else 0)
    ioctl(vm_fd, lib.KVM_PPC_CONFIGURE_V3_MMU, ffi.new("struct kvm_ppc_mmuv3_cfg *", {
        "flags": flags, "process_table": process_table | PATB_GR}))


class Spapr:
    def __init__(self, vm: "Vm", vcpu: "Vcpu", console: HvConsole, rtas: Rtas,
                 tces: TceTable) -> None:
        self.vm, self.vcpu, self.mem = vm, vcpu, vm.mem
        self.console, self._rtas, self.tces = console, rtas, tces

    def term_write(self, termno: int, data: bytes) -> bool:
        return self.console.write(termno, data)

    def term_read(self, termno: int, limit: int) -> bytes | None:
        return self.console.read(termno, limit)

    def set_interrupt_endian(self, little: bool) -> None:
        # The calling vCPU's: a kernel sets it before it starts the others,
        # whom start-cpu gives the little-endian kernel's.
        regs.set_interrupt_endian(self.vcpu, little)

    def configure_radix(self, process_table: int, gtse: bool) -> bool:
        try:
            configure_mmu(self.vm.fd, process_table, gtse)
        except OSError:
            return False
        return True

    def rtas(self, args_addr: int) -> int:
        return self._rtas.call(args_addr, self.vcpu.id)

    def mmio_read(self, addr: int, size: int) -> int:
        return self.vm.mmio.read(addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.vm.mmio.write(addr, size, value)
