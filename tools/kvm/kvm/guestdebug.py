"""--debug-single-step: each vCPU stops after every guest instruction
(KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_SINGLESTEP) and lkvm prints its
registers at each stop, as kvmtool's kvm_cpu__enable_singlestep and its
KVM_EXIT_DEBUG case do.  set_guest_debug() is where lkvm issues that
ioctl, for this and for the gdb stub's arch targets alike."""

import sys
from typing import TYPE_CHECKING

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from kvm.ioctl import ioctl

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu


def set_guest_debug(vcpu: "Vcpu", dbg: object) -> None:
    """KVM_SET_GUEST_DEBUG with `dbg`, a struct kvm_guest_debug pointer:
    its control flags (KVM_GUESTDBG_*) and the arch's debug registers."""
    ioctl(vcpu.fd, lib.KVM_SET_GUEST_DEBUG, dbg)


def single_step(vcpu: "Vcpu") -> None:
    """Make `vcpu` exit after each instruction and dump its registers on
    stderr there (stdout stays the guest's console)."""
    if not vcpu.vm.kvm.check_extension(lib.KVM_CAP_SET_GUEST_DEBUG):
        raise LkvmError("--debug-single-step: the host's KVM cannot single-step guests "
                        "(no KVM_CAP_SET_GUEST_DEBUG)")
    try:
        set_guest_debug(vcpu, ffi.new("struct kvm_guest_debug *", {
            "control": lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_SINGLESTEP}))
    except OSError as e:
        raise LkvmError(f"--debug-single-step: KVM_SET_GUEST_DEBUG failed: "
                        f"{e.strerror}") from None

    def step() -> None:
        print(f"\n #\n # vCPU #{vcpu.id} single step:\n #\n{vcpu.vm.arch.dump_vcpu(vcpu)}",
              file=sys.stderr, flush=True)
    vcpu.exits[lib.KVM_EXIT_DEBUG] = step
