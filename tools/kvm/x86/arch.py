"""The x86 arch hooks the core calls: memory layout, VM set-up, platform
devices, kernel loading, vCPU set-up and register dumps."""

from hw.i8042 import I8042
from hw.rtc import Rtc
from hw.serial8250 import Serial8250
from include.uapi import ffi, lib
from kvm.ioctl import ioctl
from x86 import cpu
from x86.flat import FlatBinary
from x86.layout import GAP_START, IDENTITY_MAP_ADDR, TSS_ADDR, VIRTIO_MMIO_START, ram_layout

memory_layout = ram_layout
dump_vcpu = cpu.dump
inject_nmi = cpu.inject_nmi

# The PC's four COM ports: (I/O base, ISA IRQ).
SERIAL_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
I8042_PORT, RTC_PORT = 0x60, 0x70

# Kernel image formats, tried in order; the first that accepts the image
# loads it.  A flat binary accepts anything, so it comes last.
LOADERS = [FlatBinary]


def init_vm(vm: object) -> None:
    vm.kvm.require("KVM_CAP_IRQCHIP", "KVM_CAP_PIT2", "KVM_CAP_USER_MEMORY",
                   "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD")
    ioctl(vm.fd, lib.KVM_SET_TSS_ADDR, TSS_ADDR)
    ioctl(vm.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", IDENTITY_MAP_ADDR))
    ioctl(vm.fd, lib.KVM_CREATE_IRQCHIP)
    ioctl(vm.fd, lib.KVM_CREATE_PIT2,
          ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY}))
    vm.supported_cpuid = cpu.supported_cpuid(vm.kvm)


def add_platform_devices(vm: object, console_out: object) -> list[Serial8250]:
    """The legacy PC devices; returns the UARTs, ttyS0 first."""
    uarts = []
    for i, (port, irq) in enumerate(SERIAL_PORTS):
        uart = Serial8250(lambda level, irq=irq: vm.irq_line(irq, level),
                          console_out if i == 0 else None)
        vm.pio.register(port, 8, uart)
        uarts.append(uart)
    vm.pio.register(I8042_PORT, 5, I8042(lambda: vm.stop(0), lambda level: vm.irq_line(1, level)))
    vm.pio.register(RTC_PORT, 2, Rtc())
    return uarts


def load_kernel(vm: object, image: bytes, initrd: bytes | None, cmdline: str) -> object:
    """Load the image with the first loader that recognises it; the
    result sets up each vCPU."""
    loader = next(loader for loader in LOADERS if loader.probe(image))
    return loader(vm, image, initrd, cmdline)


def setup_vcpu(vcpu: object, boot: object) -> None:
    cpu.set_cpuid(vcpu, vcpu.vm.supported_cpuid)
    cpu.wire_lapic(vcpu)
    boot.setup_vcpu(vcpu)


# ISA lines free for PCI INTx and virtio-mmio, as kvmtool hands out from 5
# up (the UARTs have 3 and 4, the i8042 1 and 12, the RTC 8, the PIT 0,
# the PIC cascade 2, the IDE legacy 14 and 15 are left alone too).
LEGACY_IRQS = (5, 6, 7, 9, 10, 11)
IOAPIC_PINS = 24
PIC_PINS = 8


def irqchip_routes() -> list[tuple[int, int, int]]:
    """KVM's default routes for the PIC pair and the IOAPIC, which
    KVM_SET_GSI_ROUTING would otherwise drop: (gsi, irqchip, pin)."""
    routes = [(gsi, lib.KVM_IRQCHIP_IOAPIC, gsi) for gsi in range(IOAPIC_PINS)]
    for gsi in range(2 * PIC_PINS):
        chip = lib.KVM_IRQCHIP_PIC_MASTER if gsi < PIC_PINS else lib.KVM_IRQCHIP_PIC_SLAVE
        routes.append((gsi, chip, gsi % PIC_PINS))
    return routes

# Where devices go in the 32-bit gap: PCI BARs first, virtio-mmio after.
PCI_MMIO = (GAP_START, VIRTIO_MMIO_START)
