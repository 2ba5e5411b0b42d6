"""The ppc64 arch: an sPAPR (pseries) machine under KVM-HV, as kvmtool's
powerpc port ran: a radix MMU, the hypercalls KVM leaves to userspace
handled here (hcall.py), RTAS (rtas.py), the hypervisor console, all
described by a device tree; ppc64le vmlinux ELF kernels or flat binaries
at 0; the in-kernel XICS; SMP, the other CPUs started by the guest
through RTAS; virtio-pci behind an sPAPR PCI host bridge (phb.py)."""

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from hw.panic_watch import PanicWatch
from include.uapi import lib
from kvm import fdt
from kvm.arch import Arch, Boot
from kvm.config import Config
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from kvm.tree import TOP
from powerpc import boot as loader
from powerpc import dtb, hcall, phb, xics
from powerpc import vcpu as regs
from powerpc.boot import PpcBoot
from powerpc.cmdline import kernel_cmdline
from powerpc.console import HvConsole
from powerpc.headers import UAPI_HEADERS
from powerpc.image import Image
from powerpc.layout import PCI_MMIO_END, PCI_MMIO_START, RAM_START, RTAS_SIZE, VIRTIO_MMIO_START
from powerpc.rtas import TOKENS, Rtas
from powerpc.spapr import Spapr, configure_mmu
from powerpc.tce import TceTable

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm

U64 = (1 << 64) - 1
# Transports a pseries guest cannot reach: legacy virtio-pci's registers
# are I/O ports (its BAR 0), which sPAPR's host bridge has not; and powerpc
# kernels make no devices of the device tree's virtio-mmio nodes (6.1's
# of_platform_default_populate_init() leaves them alone under CONFIG_PPC),
# nor does Debian's take them from its command line.
UNREACHABLE = {
    "pci-legacy": "its registers are I/O ports, which ppc64 guests have not",
    "mmio": "ppc64 (pseries) kernels find no virtio-mmio devices",
    "mmio-legacy": "ppc64 (pseries) kernels find no virtio-mmio devices",
}


@dataclass(frozen=True)
class PpcConfig:
    """The ppc64 part of the run configuration."""
    dump_dtb: str | None = None


class Ppc64(Arch):
    UAPI_HEADERS = UAPI_HEADERS
    MAX_CPUS = 64
    LEGACY_IRQS = tuple(range(xics.IRQ_BASE, xics.IRQ_BASE + xics.NR_IRQS))
    PCI_MMIO = (PCI_MMIO_START, PCI_MMIO_END)
    PCI_CONFIG = phb.PhbAccess()
    VIRTIO_MMIO_START = VIRTIO_MMIO_START
    # KVM's XICS has no GSI routing; a pseries guest would ask for MSIs
    # through RTAS ibm,change-msi, which lkvm does not give: INTx it is.
    MSI_ROUTES = False
    CONSOLES = ("serial", "hv")    # both the hypervisor console, hvc0
    UNREACHABLE = UNREACHABLE

    config: PpcConfig

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dump-dtb", metavar="FILE",
                            help="write the guest's device tree blob to FILE")

    @classmethod
    def configure(cls, args: argparse.Namespace) -> PpcConfig:
        return PpcConfig(dump_dtb=args.dump_dtb)

    @classmethod
    def kernel_candidates(cls) -> list[str]:
        release = os.uname().release
        return ["./vmlinux", os.path.normpath(os.path.join(TOP, "../../vmlinux")),
                f"/boot/vmlinux-{release}"]

    @classmethod
    def boots_linux(cls, image: bytes) -> bool:
        return Image.parse(image).linux  # a bad ELF gets its one line here

    def __init__(self, config: PpcConfig = PpcConfig()) -> None:
        super().__init__(config)
        self.console: HvConsole | None = None
        self.panic: PanicWatch | None = None
        self.rtas: Rtas | None = None
        self.tces = TceTable()
        self.xics = xics.Xics()

    def memory_layout(self, ram_size: int) -> list[tuple[int, int]]:
        return [(RAM_START, ram_size)]

    def init_vm(self, vm: "Vm") -> None:
        def has(cap: str) -> bool:
            return ioctl(vm.fd, lib.KVM_CHECK_EXTENSION, getattr(lib, cap)) > 0

        if not has("KVM_CAP_PPC_PAPR"):
            raise LkvmError("the host's KVM cannot run sPAPR guests (no KVM_CAP_PPC_PAPR: "
                            "load kvm-hv)")
        if not has("KVM_CAP_PPC_MMU_RADIX"):
            raise LkvmError("the host's KVM offers no radix MMU to guests, and lkvm has "
                            "no hash MMU set-up yet")
        # The guest registers its own process table (H_REGISTER_PROC_TBL);
        # until then, none.
        configure_mmu(vm.fd, 0, gtse=True)

    def create_irqchip(self, vm: "Vm") -> None:
        self.xics.create(vm)

    def vcpus_created(self, vm: "Vm") -> None:
        for vcpu in vm.vcpus:
            regs.enable_papr(vcpu)
        self.xics.connect(vm)

    def irqchip_routes(self) -> list[tuple[int, int, int]]:
        return []

    def add_platform_devices(self, vm: "Vm", console_out: Callable[[bytes], None]
                             ) -> HvConsole:
        self.panic = PanicWatch(console_out)
        self.console = HvConsole(self.panic)
        self.rtas = Rtas(vm.mem, _Services(vm, self.console, self.panic))
        return self.console

    def load_kernel(self, vm: "Vm", cfg: Config, params: str) -> Boot:
        image = Image.parse(cfg.image)
        if not image.linux or cfg.nodefaults:
            cmdline = params
        else:
            cmdline = kernel_cmdline(params, cfg.console, cfg.root.cmdline)
        return loader.load(vm, image, cfg.initrd, cmdline)

    def setup_firmware(self, vm: "Vm", boot: PpcBoot) -> None:
        blob = dtb.build(dtb.Machine(
            ram=tuple((r.gpa, r.size) for r in vm.mem.regions), cpus=len(vm.vcpus),
            cmdline=boot.cmdline, rtas=(boot.rtas, RTAS_SIZE), tokens=TOKENS, dtb=boot.dtb,
            initrd=boot.initrd, pci=vm.pci))
        fdt.dump(self.config.dump_dtb, blob)
        vm.mem.write(boot.dtb, blob)

    def setup_vcpu(self, vcpu: "Vcpu", boot: Boot) -> None:
        """The boot CPU enters the kernel; the others wait, stopped, for
        the guest's RTAS start-cpu."""
        if vcpu.id == 0:
            boot.setup_vcpu(vcpu)
        else:
            vcpu.vm.vcpu_off(vcpu.id)

    def exit_handlers(self, vcpu: "Vcpu") -> Mapping[int, Callable[[], None]]:
        return {lib.KVM_EXIT_PAPR_HCALL: partial(self._hcall, vcpu)}

    def _hcall(self, vcpu: "Vcpu") -> None:
        """KVM_EXIT_PAPR_HCALL: the call's number and r4-r12 in, r3 and r4
        on back (KVM copies args[] to r4 on as it resumes)."""
        assert self.console is not None and self.rtas is not None
        call = vcpu.run.papr_hcall
        status, *outs = hcall.dispatch(
            Spapr(vcpu.vm, vcpu, self.console, self.rtas, self.tces), call.nr, list(call.args))
        call.ret = status & U64
        for i, value in enumerate(outs):
            call.args[i] = value & U64

    def dump_vcpu(self, vcpu: "Vcpu") -> str:
        return regs.dump(vcpu)

    def inject_nmi(self, vcpu: "Vcpu") -> None:
        raise LkvmError("lkvm has no system reset to inject into ppc64 guests yet")


class _Services:
    """What RTAS's services do here."""

    def __init__(self, vm: "Vm", console: HvConsole, panic: PanicWatch) -> None:
        self.vm, self.console, self.panic = vm, console, panic

    def display(self, data: bytes) -> None:
        self.console.output(data)

    def power_off(self) -> None:
        self.vm.stop(0)

    def reboot(self) -> None:
        """Ends lkvm, as on the other arches; a panic (panic=1) reboots,
        and its banner went by on the console."""
        if self.panic.panicked:
            self.vm.stop(1, "the guest kernel panicked")
        else:
            self.vm.stop(0)

    def cpu_stopped(self, cpu: int) -> bool | None:
        return self.vm.vcpu_is_off(cpu) if 0 <= cpu < len(self.vm.vcpus) else None

    def start_cpu(self, cpu: int, entry: int, r3: int) -> None:
        # It waits parked, outside KVM_RUN: its registers are ours to set.
        regs.enter(self.vm.vcpus[cpu], entry, r3)
        self.vm.vcpu_on(cpu)

    def stop_cpu(self, cpu: int) -> None:
        self.vm.vcpu_off(cpu)

    def pci_read(self, buid: int | None, addr: int, size: int) -> tuple[int, int]:
        return phb.read_config(self.vm.pci, buid, addr, size)

    def pci_write(self, buid: int | None, addr: int, size: int, value: int) -> int:
        return phb.write_config(self.vm.pci, buid, addr, size, value)


ARCH = Ppc64
