"""The arm64 arch: a virt-like machine with an in-kernel GIC and the
architected timer, CPUs started with PSCI, a 16550 UART and a PL031 RTC
on MMIO, described to the kernel by a device tree; arm64 Images only."""

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arm import boot as loader
from arm import dtb
from arm import vcpu as regs
from arm.boot import ArmBoot
from arm.cmdline import kernel_cmdline
from arm.gdb import Arm64Gdb
from arm.gic import GICS, NR_SPIS, PRIVATE_IRQS, GicV3
from arm.headers import UAPI_HEADERS
from arm.image import Image
from arm.layout import (
    FLASH_BASE,
    FLASH_MAX_SIZE,
    PCI_ECAM,
    PCI_MMIO_END,
    PCI_MMIO_START,
    RAM_START,
    RTC_BASE,
    RTC_SIZE,
    UART_BASE,
    VIRTIO_MMIO_START,
)
from hw.panic_watch import PanicWatch
from hw.pci import Ecam
from hw.pl031 import Pl031
from hw.serial8250 import Serial8250
from include.uapi import ffi, lib
from kvm import fdt
from kvm.arch import Arch, Boot
from kvm.config import Config
from kvm.errors import LkvmError
from kvm.tree import TOP

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm

UART_REGS = 8
# SPIs: the UART's and the RTC's, then the lines the core hands out.
UART_SPI, RTC_SPI = 0, 1
# Transports whose registers are I/O ports (legacy virtio-pci's BAR 0).
NO_IO_PORTS = ("pci-legacy",)


@dataclass(frozen=True)
class ArmConfig:
    """The arm64 part of the run configuration."""
    irqchip: str = "gicv3"
    dump_dtb: str | None = None


class Arm64(Arch):
    UAPI_HEADERS = UAPI_HEADERS
    MAX_CPUS = GicV3.MAX_CPUS
    LEGACY_IRQS = tuple(range(RTC_SPI + 1, NR_SPIS))
    PCI_MMIO = (PCI_MMIO_START, PCI_MMIO_END)
    PCI_CONFIG = Ecam(PCI_ECAM)
    VIRTIO_MMIO_START = VIRTIO_MMIO_START
    FLASH = (FLASH_BASE, FLASH_MAX_SIZE)

    config: ArmConfig

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--irqchip", choices=sorted(GICS), default="gicv3",
                            help="the in-kernel interrupt controller (default: gicv3)")
        parser.add_argument("--dump-dtb", metavar="FILE",
                            help="write the guest's device tree blob to FILE")

    @classmethod
    def configure(cls, args: argparse.Namespace) -> ArmConfig:
        if args.virtio_transport in NO_IO_PORTS:
            raise LkvmError(f"--virtio-transport {args.virtio_transport} needs I/O ports, "
                            "which arm64 guests have not: use pci or mmio")
        gic = GICS[args.irqchip]
        if args.cpus is not None and args.cpus > gic.MAX_CPUS:
            raise LkvmError(f"--cpus {args.cpus}: a {gic.NAME} takes at most "
                            f"{gic.MAX_CPUS} vCPUs")
        return ArmConfig(irqchip=args.irqchip, dump_dtb=args.dump_dtb)

    @classmethod
    def kernel_candidates(cls) -> list[str]:
        release = os.uname().release
        return ["./Image", "arch/arm64/boot/Image",
                os.path.normpath(os.path.join(TOP, "../../arch/arm64/boot/Image")),
                f"/boot/vmlinuz-{release}"]

    @classmethod
    def boots_linux(cls, image: bytes) -> bool:
        Image.parse(image)  # anything else gets its one line here
        return True

    def __init__(self, config: ArmConfig = ArmConfig()) -> None:
        super().__init__(config)
        self.gic = GICS[config.irqchip]()
        self.target: object = None  # KVM_ARM_PREFERRED_TARGET
        self.console: PanicWatch | None = None

    def memory_layout(self, ram_size: int) -> list[tuple[int, int]]:
        return [(RAM_START, ram_size)]

    def init_vm(self, vm: "Vm") -> None:
        vm.kvm.require("KVM_CAP_ARM_PSCI_0_2", "KVM_CAP_DEVICE_CTRL", "KVM_CAP_IRQFD",
                       "KVM_CAP_IOEVENTFD", "KVM_CAP_ONE_REG")
        self.target = regs.preferred_target(vm.fd)

    def create_irqchip(self, vm: "Vm") -> None:
        self.gic.create(vm)

    def irq_line_id(self, line: int) -> int:
        """An SPI, by its interrupt ID: past the SGIs and PPIs."""
        return lib.KVM_ARM_IRQ_TYPE_SPI << lib.KVM_ARM_IRQ_TYPE_SHIFT | (line + PRIVATE_IRQS)

    def irqchip_routes(self) -> list[tuple[int, int, int]]:
        """KVM's default routes: GSI n is SPI n, of the one vGIC (chip 0)."""
        return [(spi, 0, spi) for spi in range(NR_SPIS)]

    def add_platform_devices(self, vm: "Vm", console_out: Callable[[bytes], None]
                             ) -> Serial8250:
        # A level line: an edge lost while the guest masks it would stall output.
        self.console = PanicWatch(console_out)
        uart = Serial8250(lambda level: vm.irq_line(UART_SPI, level), self.console)
        vm.mmio.register(UART_BASE, UART_REGS, uart)
        vm.mmio.register(RTC_BASE, RTC_SIZE, Pl031())
        return uart

    def load_kernel(self, vm: "Vm", cfg: Config, params: str) -> Boot:
        cmdline = params if cfg.nodefaults else kernel_cmdline(params, cfg.console,
                                                                 cfg.root.cmdline)
        return loader.load(vm, Image.parse(cfg.image), cfg.initrd, cmdline)

    def setup_firmware(self, vm: "Vm", boot: ArmBoot) -> None:
        blob = dtb.build(dtb.Machine(
            ram=tuple((r.gpa, r.size) for r in vm.mem.regions), cpus=len(vm.vcpus),
            gic=self.gic, cmdline=boot.cmdline, uart_irq=UART_SPI, rtc_irq=RTC_SPI,
            initrd=boot.initrd, virtio_mmio=tuple(vm.virtio_mmio), flash=vm.flash,
            pci_slots=tuple(vm.pci.intx_slots()) if vm.pci else ()))
        fdt.dump(self.config.dump_dtb, blob)
        vm.mem.write(boot.dtb, blob)

    def vcpus_created(self, vm: "Vm") -> None:
        for vcpu in vm.vcpus:
            regs.init(vcpu, self.target)
        self.gic.init()

    def setup_vcpu(self, vcpu: "Vcpu", boot: Boot) -> None:
        boot.setup_vcpu(vcpu)

    def system_event(self, vm: "Vm", kind: int) -> None:
        """PSCI SYSTEM_OFF or SYSTEM_RESET: both end lkvm, as on x86; a
        panic (panic=1) resets, and its banner went by on the console."""
        if self.console is not None and self.console.panicked:
            vm.stop(1, "the guest kernel panicked")
        else:
            vm.stop(0)

    def dump_vcpu(self, vcpu: "Vcpu") -> str:
        return regs.dump(vcpu)

    def inject_nmi(self, vcpu: "Vcpu") -> None:
        raise LkvmError("arm64 guests have no NMI")

    def describe_translation(self, vcpu: "Vcpu", addr: int) -> str:
        pa = Arm64Gdb(ffi, lib, 0, 0).translate(vcpu, addr)
        return f"vCPU {vcpu.id} virtual {addr:#x}: " + \
            (f"physical {pa:#x}" if pa is not None else "unmapped")

    def gdb_target(self, vm: "Vm") -> Arm64Gdb:
        if not vm.kvm.check_extension(lib.KVM_CAP_SET_GUEST_DEBUG):
            raise LkvmError("--gdb: this host's KVM cannot debug guests (no KVM_SET_GUEST_DEBUG)")
        return Arm64Gdb(ffi, lib, vm.kvm.check_extension(lib.KVM_CAP_GUEST_DEBUG_HW_BPS),
                        vm.kvm.check_extension(lib.KVM_CAP_GUEST_DEBUG_HW_WPS))


ARCH = Arm64
