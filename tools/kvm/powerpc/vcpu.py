"""ppc64 vCPUs under KVM-HV: sPAPR mode (KVM_CAP_PPC_PAPR, which sends the
hypercalls KVM does not handle to lkvm), the entry registers, and the
interrupt endianness in LPCR."""

from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm.ioctl import ioctl

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu

# MSR and LPCR bits (Power ISA; the kernel's asm/reg.h is not uapi): 64-bit
# mode, machine checks on, little-endian; interrupts taken little-endian.
MSR_SF, MSR_ME, MSR_LE = 1 << 63, 1 << 12, 1 << 0
LPCR_ILE = 1 << 25


def enable_papr(vcpu: "Vcpu") -> None:
    ioctl(vcpu.fd, lib.KVM_ENABLE_CAP,
          ffi.new("struct kvm_enable_cap *", {"cap": lib.KVM_CAP_PPC_PAPR}))


def _one_reg(vcpu: "Vcpu", request: int, reg: int, buf: object) -> None:
    ioctl(vcpu.fd, request, ffi.new("struct kvm_one_reg *", {
        "id": reg, "addr": int(ffi.cast("uintptr_t", buf))}))


def set_interrupt_endian(vcpu: "Vcpu", little: bool) -> None:
    buf = ffi.new("uint64_t *")
    _one_reg(vcpu, lib.KVM_GET_ONE_REG, lib.KVM_REG_PPC_LPCR_64, buf)
    buf[0] = buf[0] | LPCR_ILE if little else buf[0] & ~LPCR_ILE
    _one_reg(vcpu, lib.KVM_SET_ONE_REG, lib.KVM_REG_PPC_LPCR_64, buf)


def enter(vcpu: "Vcpu", pc: int, r3: int) -> None:
    """The entry a kernel takes without Open Firmware (kvmtool's) and
    RTAS start-cpu's: real mode, 64-bit, little-endian, r3 given (the
    device tree's address at boot) and the rest zero (r4: no client
    interface)."""
    regs = vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs")
    regs.pc = pc
    regs.msr = MSR_SF | MSR_ME | MSR_LE
    for i in range(32):
        regs.gpr[i] = 0
    regs.gpr[3] = r3
    vcpu.set(lib.KVM_SET_REGS, regs)
    set_interrupt_endian(vcpu, True)


def dump(vcpu: "Vcpu") -> str:
    r = vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs")
    lines = [f" pc:  {r.pc:016x}  msr: {r.msr:016x}  lr: {r.lr:016x}",
             f" ctr: {r.ctr:016x}  cr:  {r.cr:08x}  xer: {r.xer:016x}"]
    for i in range(0, 32, 4):
        lines.append("  ".join(f"r{j:<2}: {r.gpr[j]:016x}" for j in range(i, i + 4)))
    return "\n".join(lines)
