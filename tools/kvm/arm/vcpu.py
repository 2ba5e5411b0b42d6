"""arm64 vCPUs: KVM_ARM_VCPU_INIT with PSCI 0.2, and the core registers
through KVM_{GET,SET}_ONE_REG (arm64 has no KVM_GET_REGS)."""

from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm.ioctl import ioctl

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu

GENERAL_REGS = 31  # x0-x30


def core_reg(*path: str | int) -> int:
    """The ONE_REG id of a 64-bit field of struct kvm_regs, named as
    ffi.offsetof takes it ("regs", "pc"; "regs", "regs", 3 for x3): its
    offset in 32-bit words."""
    offset = ffi.offsetof("struct kvm_regs", *path)
    return lib.KVM_REG_ARM64 | lib.KVM_REG_SIZE_U64 | lib.KVM_REG_ARM_CORE | offset // 4


def set_reg(vcpu: "Vcpu", reg: int, value: int) -> None:
    buf = ffi.new("uint64_t *", value)
    ioctl(vcpu.fd, lib.KVM_SET_ONE_REG, ffi.new("struct kvm_one_reg *", {
        "id": reg, "addr": int(ffi.cast("uintptr_t", buf))}))


def get_reg(vcpu: "Vcpu", reg: int) -> int:
    buf = ffi.new("uint64_t *")
    ioctl(vcpu.fd, lib.KVM_GET_ONE_REG, ffi.new("struct kvm_one_reg *", {
        "id": reg, "addr": int(ffi.cast("uintptr_t", buf))}))
    return buf[0]


def preferred_target(vm_fd: int) -> object:
    init = ffi.new("struct kvm_vcpu_init *")
    ioctl(vm_fd, lib.KVM_ARM_PREFERRED_TARGET, init)
    return init


def init(vcpu: "Vcpu", target: object) -> None:
    """The CPU KVM likes best, with PSCI 0.2; all but the boot CPU start
    powered off, for the guest to bring up with PSCI CPU_ON."""
    init = ffi.new("struct kvm_vcpu_init *")
    init.target = target.target
    features = 1 << lib.KVM_ARM_VCPU_PSCI_0_2
    if vcpu.id:
        features |= 1 << lib.KVM_ARM_VCPU_POWER_OFF
    init.features[0] = features
    ioctl(vcpu.fd, lib.KVM_ARM_VCPU_INIT, init)


def enter(vcpu: "Vcpu", pc: int, dtb: int) -> None:
    """booting.rst's entry state: x0 the DT, x1-x3 zero (as reset leaves
    them), EL1h with D, A, I and F masked."""
    set_reg(vcpu, core_reg("regs", "pstate"), lib.PSR_MODE_EL1h | lib.PSR_D_BIT | lib.PSR_A_BIT
            | lib.PSR_I_BIT | lib.PSR_F_BIT)
    set_reg(vcpu, core_reg("regs", "regs", 0), dtb)
    set_reg(vcpu, core_reg("regs", "pc"), pc)


def mpidr_affinity(index: int) -> int:
    """The affinity KVM gives vCPU `index` in MPIDR_EL1 (16 CPUs to a
    cluster at Aff0, clusters at Aff1, then Aff2): the DT's cpu reg."""
    return (index >> 12 & 0xFF) << 16 | (index >> 4 & 0xFF) << 8 | (index & 0xF)


def dump(vcpu: "Vcpu") -> str:
    def reg(*path: str | int) -> str:
        return f"{get_reg(vcpu, core_reg(*path)):016x}"

    lines = [f" pc:  {reg('regs', 'pc')}  pstate: {reg('regs', 'pstate')}",
             f" sp:  {reg('regs', 'sp')}  sp_el1: {reg('sp_el1')}  elr_el1: {reg('elr_el1')}"]
    for i in range(0, GENERAL_REGS, 3):
        lines.append("  ".join(f" x{j:<2}: {reg('regs', 'regs', j)}"
                               for j in range(i, min(i + 3, GENERAL_REGS))))
    return "\n".join(lines)
