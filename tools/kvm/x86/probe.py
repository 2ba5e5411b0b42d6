"""Can this host's KVM run guest kernel code (CPL0) at full speed?

Nested PVM, for one, emulates it: Linux guests crawl.  A scratch VM with
no irqchip (so HLT exits to us) runs a short real-mode loop; natively it
takes microseconds, emulated a few milliseconds.  Asked only before
booting a Linux kernel; flat binaries are tiny either way.
"""

import mmap
import os
import time

from include.uapi import ffi, lib
from kvm import msg
from kvm.ioctl import ioctl, ioctl_fd

# mov $20000, %cx; 1: loop 1b; hlt -- at 0x0000:0x1000
LOOP = bytes.fromhex("b9204e" "e2fe" "f4")
LOOP_ADDR = 0x1000
SLOW_NS = 3_000_000  # PVM: ~9 ms; L1's nested KVM under TCG: under 1 ms


def cpl0_seconds(kvm: object) -> float | None:
    """Time the loop in a scratch VM; None if it did not end in HLT."""
    vm_fd = kvm.create_vm()
    ram = mmap.mmap(-1, 0x2000)
    try:
        ram[LOOP_ADDR:LOOP_ADDR + len(LOOP)] = LOOP
        ioctl(vm_fd, lib.KVM_SET_USER_MEMORY_REGION, ffi.new(
            "struct kvm_userspace_memory_region *",
            {"memory_size": len(ram),
             "userspace_addr": int(ffi.cast("uintptr_t", ffi.from_buffer(ram)))}))
        vcpu_fd = ioctl_fd(vm_fd, lib.KVM_CREATE_VCPU, 0)
        run_map = mmap.mmap(vcpu_fd, kvm.vcpu_mmap_size, flags=mmap.MAP_SHARED)
        try:
            run = ffi.from_buffer("struct kvm_run *", run_map)
            sregs = ffi.new("struct kvm_sregs *")
            ioctl(vcpu_fd, lib.KVM_GET_SREGS, sregs)
            sregs.cs.base, sregs.cs.selector = 0, 0
            ioctl(vcpu_fd, lib.KVM_SET_SREGS, sregs)
            regs = ffi.new("struct kvm_regs *", {"rip": LOOP_ADDR,
                                                  "rflags": lib.X86_EFLAGS_FIXED})
            # The first run pays for faulting in memory and the VM's
            # first entry; the second is the loop alone.
            for _ in range(2):
                ioctl(vcpu_fd, lib.KVM_SET_REGS, regs)
                start = time.perf_counter()
                ioctl(vcpu_fd, lib.KVM_RUN, 0)
                took = time.perf_counter() - start
                halted = run.exit_reason == lib.KVM_EXIT_HLT
            del run
        finally:
            run_map.close()
            os.close(vcpu_fd)
        return took if halted else None
    finally:
        os.close(vm_fd)
        ram.close()


def warn_if_slow(kvm: object) -> None:
    took = cpl0_seconds(kvm)
    if took is None or took * 1e9 > SLOW_NS:
        msg.warning("this host's KVM does not run guest kernel code natively "
                    "(nested PVM?): Linux guests will be very slow here")
