"""The in-kernel GIC (KVM_CREATE_DEVICE): GICv3 by default, GICv2 with
--irqchip gicv2; and its device tree node.

The vGIC takes its number of interrupts before KVM_DEV_ARM_VGIC_CTRL_INIT
(without it KVM sizes it for no SPIs at all), and CTRL_INIT once every
vCPU exists, before any irqfd (KVM refuses those with EAGAIN until then)."""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from arm.layout import (
    GIC_DIST,
    GIC_DIST_SIZE,
    GIC_REDIST,
    GIC_REDIST_END,
    GIC_REDIST_STRIDE,
    GICV2_CPU,
    GICV2_CPU_SIZE,
)
from include.uapi import ffi, lib
from kvm.errors import LkvmError
from kvm.fdt import DeviceTree, u64_cells
from kvm.ioctl import ioctl

if TYPE_CHECKING:
    from kvm.vm import Vm

# SGIs and PPIs come first (per CPU), then the SPIs devices use; a
# multiple of 32 as the GIC counts them.
PRIVATE_IRQS = 32
NR_IRQS = 128
NR_SPIS = NR_IRQS - PRIVATE_IRQS

# Interrupt specifiers of the GIC binding (dt-bindings/interrupt-controller/
# arm-gic.h and irq.h): DT ABI, in no uapi header.
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_EDGE_RISING, IRQ_TYPE_LEVEL_HIGH = 1, 4

# Phandles of the nodes others point at.
PHANDLE_GIC, PHANDLE_APB_CLOCK = 1, 2


class Gic(ABC):
    NAME: ClassVar[str]
    DEVICE_TYPE: ClassVar[str]     # KVM_DEV_TYPE_*
    COMPATIBLE: ClassVar[str]
    MAX_CPUS: ClassVar[int]

    def __init__(self) -> None:
        self.fd = -1

    @abstractmethod
    def regions(self, cpus: int) -> list[tuple[str, int, int]]:
        """(KVM_VGIC_* address type, base, size), in the DT's reg order."""

    def create(self, vm: "Vm") -> None:
        dev = ffi.new("struct kvm_create_device *", {"type": getattr(lib, self.DEVICE_TYPE)})
        try:
            ioctl(vm.fd, lib.KVM_CREATE_DEVICE, dev)
        except OSError as e:
            others = " or ".join(f"--irqchip {n}" for n, g in GICS.items() if g is not type(self))
            raise LkvmError(f"this host's KVM has no in-kernel {self.NAME} ({e.strerror}); "
                            f"try {others}") from None
        self.fd = dev.fd
        for kind, base, _ in self.regions(1):  # the redistributors' size follows the vCPUs
            self._set(lib.KVM_DEV_ARM_VGIC_GRP_ADDR, getattr(lib, kind),
                      ffi.new("uint64_t *", base))
        self._set(lib.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, ffi.new("uint32_t *", NR_IRQS))

    def init(self) -> None:
        self._set(lib.KVM_DEV_ARM_VGIC_GRP_CTRL, lib.KVM_DEV_ARM_VGIC_CTRL_INIT, ffi.NULL)

    def _set(self, group: int, attr: int, value: object) -> None:
        ioctl(self.fd, lib.KVM_SET_DEVICE_ATTR, ffi.new("struct kvm_device_attr *", {
            "group": group, "attr": attr, "addr": int(ffi.cast("uintptr_t", value))}))

    def describe(self, dt: DeviceTree, cpus: int) -> None:
        regs = self.regions(cpus)
        dt.leaf(f"intc@{regs[0][1]:x}", {
            "compatible": self.COMPATIBLE, "#interrupt-cells": 3, "#address-cells": 0,
            "interrupt-controller": b"", "phandle": PHANDLE_GIC,
            "reg": u64_cells(*(v for _, base, size in regs for v in (base, size)))})


class GicV3(Gic):
    NAME = "GICv3"
    DEVICE_TYPE = "KVM_DEV_TYPE_ARM_VGIC_V3"
    COMPATIBLE = "arm,gic-v3"
    # The redistributors' room before the UART.
    MAX_CPUS = (GIC_REDIST_END - GIC_REDIST) // GIC_REDIST_STRIDE

    def regions(self, cpus: int) -> list[tuple[str, int, int]]:
        return [("KVM_VGIC_V3_ADDR_TYPE_DIST", GIC_DIST, GIC_DIST_SIZE),
                ("KVM_VGIC_V3_ADDR_TYPE_REDIST", GIC_REDIST, GIC_REDIST_STRIDE * cpus)]


class GicV2(Gic):
    NAME = "GICv2"
    DEVICE_TYPE = "KVM_DEV_TYPE_ARM_VGIC_V2"
    COMPATIBLE = "arm,cortex-a15-gic"
    MAX_CPUS = 8  # its target lists are a byte

    def regions(self, cpus: int) -> list[tuple[str, int, int]]:
        return [("KVM_VGIC_V2_ADDR_TYPE_DIST", GIC_DIST, GIC_DIST_SIZE),
                ("KVM_VGIC_V2_ADDR_TYPE_CPU", GICV2_CPU, GICV2_CPU_SIZE)]


GICS: dict[str, type[Gic]] = {"gicv3": GicV3, "gicv2": GicV2}
