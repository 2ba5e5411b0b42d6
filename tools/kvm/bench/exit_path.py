"""User CPU of lkvm's Python exit path alone: the dispatch of a port-I/O
exit through the vCPU's table, _exit_io, the bus and the device, on a
kvm_run filled in by hand, without KVM_RUN.

pio.py's whole-run figures also hold the ioctl, the GIL and the host's
exit cost, and on a loaded machine their noise hides changes of a few
hundred nanoseconds to the Python path; this one does not.  The minimum
of several rounds is the figure: interference only adds.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from include.uapi import lib  # noqa: E402
from kvm.config import Config  # noqa: E402
from kvm.kvm import Kvm  # noqa: E402
from kvm.vcpu import EXIT_REASON, EXIT_REASON_AT  # noqa: E402
from kvm.vm import Vm  # noqa: E402
from x86.arch import X86  # noqa: E402

# (what, direction, port): a claimed no-op port, an unclaimed one, and
# the UART's LSR that a console polls before each byte.
CASES = (("dummy out 0xed", lib.KVM_EXIT_IO_OUT, 0xED),
         ("unclaimed out 0x80", lib.KVM_EXIT_IO_OUT, 0x80),
         ("8250 LSR in 0x3fd", lib.KVM_EXIT_IO_IN, 0x3FD))
EXITS, ROUNDS = 50_000, 20


def per_exit_us(vcpu: object, direction: int, port: int) -> float:
    io = vcpu.run.io
    vcpu.run.exit_reason = lib.KVM_EXIT_IO
    io.direction, io.size, io.port, io.count = direction, 1, port, 1
    io.data_offset = len(vcpu.run_map) - 64
    exits, page, fatal = vcpu.exits, vcpu.run_map, vcpu._exit_fatal
    unpack = EXIT_REASON.unpack_from
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(EXITS):   # the dispatch line of Vcpu._loop
            exits.get(unpack(page, EXIT_REASON_AT)[0], fatal)()
        best = min(best, time.process_time() - t0)
    return best / EXITS * 1e6


def main() -> None:
    kvm = Kvm()
    arch = X86()
    vm = Vm(kvm, arch, Config(name="bench", cpus=1, ram_mib=16))
    arch.add_platform_devices(vm, lambda data: None)
    try:
        for what, direction, port in CASES:
            print(f"exit path, {what}: {per_exit_us(vm.vcpus[0], direction, port):.2f} us "
                  "user CPU per exit")
    finally:
        vm.close()
        kvm.close()


if __name__ == "__main__":
    main()
