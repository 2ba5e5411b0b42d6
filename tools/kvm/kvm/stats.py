"""A vCPU's KVM statistics, read without stopping it.

KVM_GET_STATS_FD (Linux 5.14) gives a file laid out as a header, a table
of descriptors and the values; a pread of the values is all a look costs,
and unlike every vCPU ioctl it does not wait for the vCPU to leave
KVM_RUN.  The halt check uses it to see that a guest runs without parking
its vCPUs.
"""

import os
from typing import NamedTuple

from include.uapi import ffi, lib
from kvm.cstruct import packer
from kvm.ioctl import ioctl_fd

HEADER = packer("struct kvm_stats_header")
DESC = packer("struct kvm_stats_desc")    # flags exponent size offset bucket_size
OFFSET = 3
NAME_AT = ffi.offsetof("struct kvm_stats_desc", "name")
VALUE = 8  # every statistic is counted in u64s

# Whether the vCPU sits blocked in the kernel (halted, or an AP waiting
# for INIT/SIPI), and counters that move whenever its guest runs: a guest
# that halts again has run, and its HLT exited.  Not halt_wakeup: the
# halt check's own kick of a halted vCPU counts as a wakeup.
BLOCKING = "blocking"
ACTIVITY = ("exits", "halt_exits")


class Sample(NamedTuple):
    blocking: bool
    activity: tuple[int, ...]


class VcpuStats:
    def __init__(self, vcpu_fd: int) -> None:
        """OSError if this KVM has no binary statistics, KeyError if it
        lacks one the halt check reads."""
        self.fd = ioctl_fd(vcpu_fd, lib.KVM_GET_STATS_FD)
        try:
            _, name_size, count, _, desc_at, self.data_at = HEADER.unpack(
                os.pread(self.fd, HEADER.size, 0))
            step = DESC.size + name_size
            table = os.pread(self.fd, step * count, desc_at)
            offsets = {}
            for at in range(0, step * count, step):
                offset = DESC.unpack_from(table, at)[OFFSET]
                name = table[at + NAME_AT:at + step].split(b"\0", 1)[0]
                offsets[name.decode()] = offset
            self.blocking = offsets[BLOCKING]
            self.activity = tuple(offsets[n] for n in ACTIVITY)
            self.data_len = max(self.blocking, *self.activity) + VALUE
        except BaseException:
            os.close(self.fd)
            raise

    def sample(self) -> Sample:
        data = os.pread(self.fd, self.data_len, self.data_at)

        def value(offset: int) -> int:
            return int.from_bytes(data[offset:offset + VALUE], "little")
        return Sample(bool(value(self.blocking)), tuple(value(o) for o in self.activity))

    def close(self) -> None:
        os.close(self.fd)
