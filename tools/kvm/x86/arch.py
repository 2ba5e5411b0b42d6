"""The x86 arch: a PC with an in-kernel PIC, IOAPIC and PIT, legacy
devices on I/O ports, a BIOS, MP and ACPI tables, and bzImage, vmlinux
(PVH) and flat binary kernels."""

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hw.acpi_pm import AcpiPm
from hw.i8042 import I8042
from hw.panic_watch import PanicWatch
from hw.pci import Conf1
from hw.rtc import Rtc
from hw.serial8250 import Serial8250
from include.uapi import ffi, lib
from kvm import msg
from kvm.arch import Arch, Boot
from kvm.config import Config
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from kvm.tree import TOP
from x86 import acpi, bios, cpu, ioport, irqchip, mptable, probe
from x86.bzimage import BzImage
from x86.cmdline import kernel_cmdline
from x86.e820 import e820_map
from x86.firmware import Firmware
from x86.flat import FlatBinary
from x86.headers import UAPI_HEADERS
from x86.layout import (
    ACPI_START,
    GAP_START,
    IDENTITY_MAP_ADDR,
    KERNEL_ADDR,
    MPTABLE_START,
    TSS_ADDR,
    VIRTIO_MMIO_START,
    ram_layout,
)
from x86.vmlinux import Vmlinux

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm
    from x86.gdb import X86Gdb

# The PC's four COM ports: (I/O base, ISA IRQ).
SERIAL_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
I8042_PORT, RTC_PORT = 0x60, 0x70

# Kernel image formats, tried in order; the first that accepts the image
# loads it.  A flat binary accepts anything, so it comes last.  Each Linux
# format lists its boot modes, the fastest first: the default.
LOADERS = [BzImage, Vmlinux, FlatBinary]
BOOT_MODES = ("auto", "realmode", "64", "pvh")

# Other arches' kernels, which the flat binary loader would take and run
# as garbage: (offset, signature, what it is).
FOREIGN = ((0x38, b"ARM\x64", "an arm64 Image"),)

IOAPIC_PINS = 24
PIC_PINS = 8


@dataclass(frozen=True)
class X86Config:
    """The x86 part of the run configuration."""
    boot_mode: str = "auto"
    acpi: bool = True


class X86(Arch):
    UAPI_HEADERS = UAPI_HEADERS
    # Without x2APIC a CPU's APIC ID is the byte in CPUID.1:EBX[31:24] and
    # the count beside it is a byte too; 0xFF is the broadcast ID.
    # kvmtool's MP table stops at the same count.
    MAX_CPUS = 255
    # ISA lines free for PCI INTx and virtio-mmio, as kvmtool hands out
    # from 5 up (the UARTs have 3 and 4, the i8042 1 and 12, the RTC 8,
    # the PIT 0, the PIC cascade 2, the IDE legacy 14 and 15 are left
    # alone too).
    LEGACY_IRQS = (5, 6, 7, 9, 10, 11)
    # Where devices go in the 32-bit gap: PCI BARs first, virtio-mmio after.
    PCI_MMIO = (GAP_START, VIRTIO_MMIO_START)
    PCI_CONFIG = Conf1()  # Linux takes pci=conf1
    HALT_CHECK = True
    VIRTIO_MMIO_START = VIRTIO_MMIO_START

    config: X86Config

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--boot-mode", choices=BOOT_MODES, default="auto",
                            help="how to enter a Linux kernel (default: the fastest it supports)")
        parser.add_argument("--acpi", action=argparse.BooleanOptionalAction, default=True,
                            help="give the guest ACPI tables (default: yes)")

    @classmethod
    def configure(cls, args: argparse.Namespace) -> X86Config:
        return X86Config(boot_mode=args.boot_mode, acpi=args.acpi)

    @classmethod
    def kernel_candidates(cls) -> list[str]:
        """kvmtool's list: a kernel tree's build, then the host's own."""
        release = os.uname().release
        return ["./bzImage", "arch/x86/boot/bzImage",
                os.path.normpath(os.path.join(TOP, "../../arch/x86/boot/bzImage")),
                f"/boot/vmlinuz-{release}", f"/boot/bzImage-{release}"]

    @classmethod
    def boots_linux(cls, image: bytes) -> bool:
        return image_loader(image) is not FlatBinary

    def __init__(self, config: X86Config = X86Config()) -> None:
        super().__init__(config)
        self.supported_cpuid: object = None  # KVM_GET_SUPPORTED_CPUID, once per VM
        self.uarts: list[Serial8250] = []

    def memory_layout(self, ram_size: int) -> list[tuple[int, int]]:
        return ram_layout(ram_size)

    def init_vm(self, vm: "Vm") -> None:
        vm.kvm.require("KVM_CAP_IRQCHIP", "KVM_CAP_PIT2", "KVM_CAP_USER_MEMORY",
                       "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD")
        ioctl(vm.fd, lib.KVM_SET_TSS_ADDR, TSS_ADDR)
        ioctl(vm.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", IDENTITY_MAP_ADDR))
        self.supported_cpuid = cpu.supported_cpuid(vm.kvm)

    def create_irqchip(self, vm: "Vm") -> None:
        ioctl(vm.fd, lib.KVM_CREATE_IRQCHIP)
        ioctl(vm.fd, lib.KVM_CREATE_PIT2,
              ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY}))
        # By default KVM holds back each PIT tick until the guest
        # acknowledged the last one; one lost acknowledgement then stops
        # the tick for good, and a booting Linux waits for jiffies for
        # ever (seen in the nested test host).  Linux keeps time without
        # replayed ticks.
        ioctl(vm.fd, lib.KVM_REINJECT_CONTROL,
              ffi.new("struct kvm_reinject_control *", {"pit_reinject": 0}))

    def irqchip_routes(self) -> list[tuple[int, int, int]]:
        """KVM's default routes for the PIC pair and the IOAPIC, which
        KVM_SET_GSI_ROUTING would otherwise drop."""
        routes = [(gsi, lib.KVM_IRQCHIP_IOAPIC, gsi) for gsi in range(IOAPIC_PINS)]
        for gsi in range(2 * PIC_PINS):
            chip = lib.KVM_IRQCHIP_PIC_MASTER if gsi < PIC_PINS else lib.KVM_IRQCHIP_PIC_SLAVE
            routes.append((gsi, chip, gsi % PIC_PINS))
        return routes

    def add_platform_devices(self, vm: "Vm", console_out: Callable[[bytes], None]
                             ) -> Serial8250:
        """The legacy PC devices; ttyS0 is the console."""
        uarts = []
        console_out = watch = PanicWatch(console_out)
        for i, (port, irq) in enumerate(SERIAL_PORTS):
            uart = Serial8250(lambda level, irq=irq: vm.irq_line(irq, level),
                              console_out if i == 0 else None)
            vm.pio.register(port, 8, uart)
            uarts.append(uart)

        def reset() -> None:
            # Both `reboot` and a panic (panic=1) end the guest with a reset.
            if watch.panicked:
                vm.stop(1, "the guest kernel panicked")
            else:
                vm.stop(0)

        vm.pio.register(I8042_PORT, 5, I8042(reset, lambda level: vm.irq_line(1, level)))
        vm.pio.register(RTC_PORT, 2, Rtc())
        vm.pio.register(acpi.PM_BASE, acpi.PM_LEN, AcpiPm(acpi.S5_SLP_TYP, lambda: vm.stop(0)))
        ioport.register(vm.pio, console_out)
        self.uarts = uarts
        return uarts[0]

    def serial_port(self, index: int) -> Serial8250 | None:
        return self.uarts[index] if 0 < index < len(self.uarts) else None

    def load_kernel(self, vm: "Vm", cfg: Config, params: str) -> Boot:
        """Load the image with the first loader that recognises it.  A
        Linux kernel also gets lkvm's command line, with the root lkvm
        chose (none: the first disk), and where setup_firmware puts the
        ACPI tables."""
        loader = image_loader(cfg.image)
        msg.debug(f"{cfg.kernel}: a {loader.name}, {len(cfg.image)} bytes")
        # No device tree: each virtio-mmio device is a command line fragment.
        params = " ".join([*(f"virtio_mmio.device={size:#x}@{base:#x}:{line}"
                             for base, size, line in vm.virtio_mmio), params]).strip()
        if loader is FlatBinary:
            return loader(vm, cfg.image, cfg.initrd, params)
        mode, with_acpi = self.config.boot_mode, self.config.acpi
        if mode != "auto" and mode not in loader.modes:
            raise LkvmError(f"--boot-mode {mode}: a {loader.name} boots with "
                            f"{' or '.join(loader.modes)}")
        if vm.ram_size <= KERNEL_ADDR:
            raise LkvmError(f"-m {vm.ram_size >> 20}: a {loader.name} is loaded at "
                            f"{KERNEL_ADDR >> 20} MiB and needs RAM above it")
        probe.warn_if_slow(vm.kvm)
        # --nodefaults: the user's line alone, as kvmtool (the virtio-mmio
        # fragments stay: they describe devices, as a device tree would).
        cmdline = params if cfg.nodefaults else \
            kernel_cmdline(params, cfg.console, with_acpi, cfg.root.cmdline)
        msg.debug(f"kernel command line: {cmdline}")
        return loader(vm, cfg.image, cfg.initrd, cmdline, mode,
                      ACPI_START if with_acpi else None)

    def load_firmware(self, vm: "Vm", cfg: Config) -> Firmware:
        return Firmware(vm, cfg.image)

    def setup_firmware(self, vm: "Vm", boot: Boot) -> None:
        """What a PC's BIOS leaves for a Linux kernel: the real-mode
        services and memory map, the MP table and the ACPI tables that
        list the CPUs.  A flat binary gets none of it, nor does the
        user's firmware: it is the BIOS."""
        if isinstance(boot, (FlatBinary, Firmware)):
            return
        bios.install(vm.mem, e820_map(vm.mem.layout()))
        cpuid = self.supported_cpuid
        leaf1 = next(e for e in cpuid.entries[0:cpuid.nent] if e.function == 1)
        vm.mem.write(MPTABLE_START, mptable.build(MPTABLE_START, len(vm.vcpus), leaf1.eax,
                                                  leaf1.edx))
        if self.config.acpi:
            vm.mem.write(ACPI_START, acpi.build(ACPI_START, len(vm.vcpus)))

    def setup_vcpu(self, vcpu: "Vcpu", boot: Boot) -> None:
        cpu.set_cpuid(vcpu, self.supported_cpuid)
        cpu.wire_lapic(vcpu)
        boot.setup_vcpu(vcpu)

    def vcpus_created(self, vm: "Vm") -> None:
        """Nothing: x86's irqchip took its vCPUs as KVM made them."""

    def dump_vcpu(self, vcpu: "Vcpu") -> str:
        return cpu.dump(vcpu) + "\n" + irqchip.dump(vcpu)

    def inject_nmi(self, vcpu: "Vcpu") -> None:
        cpu.inject_nmi(vcpu)

    def guest_halted(self, vm: "Vm") -> bool:
        return cpu.guest_halted(vm)

    def describe_translation(self, vcpu: "Vcpu", addr: int) -> str:
        return cpu.describe_translation(vcpu, addr)

    def gdb_target(self, vm: "Vm") -> "X86Gdb":
        from x86.gdb import X86Gdb  # only --gdb loads the stub's modules
        if not vm.kvm.check_extension(lib.KVM_CAP_SET_GUEST_DEBUG):
            raise LkvmError("--gdb: this host's KVM cannot debug guests (no KVM_SET_GUEST_DEBUG)")
        return X86Gdb(vm.kvm.check_extension(lib.KVM_CAP_SET_GUEST_DEBUG2))


def image_loader(image: bytes) -> type:
    for offset, signature, what in FOREIGN:
        if image[offset:offset + len(signature)] == signature:
            raise LkvmError(f"the kernel is {what}; this x86 lkvm boots x86 kernels")
    return next(loader for loader in LOADERS if loader.probe(image))


ARCH = X86
