"""The in-kernel XICS (KVM_CREATE_DEVICE, KVM_DEV_TYPE_XICS): KVM answers
the guest's XICS hypercalls (H_XIRR, H_EOI, H_CPPR, H_IPI) and, once lkvm
names their tokens to it, the RTAS calls that route the sources; lkvm
raises sources with KVM_IRQ_LINE.  Its device tree node is QEMU's and
PAPR's: the presentation controller every CPU's server sits on."""

from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from kvm.ioctl import ioctl

if TYPE_CHECKING:
    from kvm.fdt import DeviceTree
    from kvm.vm import Vm

# XICS numbers its sources from 4096 (0-15 are IPIs and the like): those
# the core hands out to devices.
IRQ_BASE, NR_IRQS = 4096, 64
PHANDLE = 1
# The RTAS services KVM implements for its XICS, with lkvm's tokens for
# them (beside rtas.py's, which lkvm answers itself).
TOKENS = {"ibm,set-xive": 0x2100, "ibm,get-xive": 0x2101,
          "ibm,int-off": 0x2102, "ibm,int-on": 0x2103}
# A source at reset: the least favoured priority, masked, on server 0.
LOWEST_PRIORITY = 0xFF


class Xics:
    def __init__(self) -> None:
        self.fd = -1

    def create(self, vm: "Vm") -> None:
        dev = ffi.new("struct kvm_create_device *", {"type": lib.KVM_DEV_TYPE_XICS})
        try:
            ioctl(vm.fd, lib.KVM_CREATE_DEVICE, dev)
        except OSError as e:
            raise LkvmError(f"this host's KVM has no in-kernel XICS ({e.strerror}), and "
                            "lkvm no XICS of its own yet") from None
        self.fd = dev.fd
        state = ffi.new("uint64_t *", lib.KVM_XICS_LEVEL_SENSITIVE | lib.KVM_XICS_MASKED
                        | LOWEST_PRIORITY << lib.KVM_XICS_PRIORITY_SHIFT)
        for irq in range(IRQ_BASE, IRQ_BASE + NR_IRQS):
            ioctl(self.fd, lib.KVM_SET_DEVICE_ATTR, ffi.new("struct kvm_device_attr *", {
                "group": lib.KVM_DEV_XICS_GRP_SOURCES, "attr": irq,
                "addr": int(ffi.cast("uintptr_t", state))}))
        for name, token in TOKENS.items():
            ioctl(vm.fd, lib.KVM_PPC_RTAS_DEFINE_TOKEN, ffi.new(
                "struct kvm_rtas_token_args *", {"name": name.encode(), "token": token}))

    def connect(self, vm: "Vm") -> None:
        """Each vCPU's presentation controller, its server number its id."""
        for vcpu in vm.vcpus:
            cap = ffi.new("struct kvm_enable_cap *", {"cap": lib.KVM_CAP_IRQ_XICS})
            cap.args[0], cap.args[1] = self.fd, vcpu.id
            ioctl(vcpu.fd, lib.KVM_ENABLE_CAP, cap)


def describe(dt: "DeviceTree", cpus: int) -> None:
    dt.leaf("interrupt-controller", {
        "device_type": "PowerPC-External-Interrupt-Presentation",
        "compatible": "IBM,ppc-xicp", "interrupt-controller": b"",
        "#interrupt-cells": 2, "#address-cells": 0,
        "ibm,interrupt-server-ranges": [0, cpus], "phandle": PHANDLE,
        "linux,phandle": PHANDLE})
