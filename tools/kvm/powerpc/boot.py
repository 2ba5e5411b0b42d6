"""Where a ppc64 kernel, its initrd, the device tree and RTAS go in guest
RAM: the image's segments from 0, the device tree at the top of RAM, the
RTAS page under it and the initrd under that."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvm.errors import LkvmError
from powerpc import vcpu as regs
from powerpc.image import Image
from powerpc.layout import FDT_MAX_SIZE, RTAS_SIZE, SZ_4K, SZ_64K
from powerpc.rtas import BLOB

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm


@dataclass(frozen=True)
class PpcBoot:
    entry: int
    dtb: int
    rtas: int
    cmdline: str
    initrd: tuple[int, int] | None   # [start, end)

    def setup_vcpu(self, vcpu: "Vcpu") -> None:
        regs.enter(vcpu, self.entry, self.dtb)


def load(vm: "Vm", image: Image, initrd: bytes | None, cmdline: str) -> PpcBoot:
    mib = vm.ram_size >> 20
    dtb = (vm.ram_size - FDT_MAX_SIZE) & ~(SZ_64K - 1)
    rtas = dtb - RTAS_SIZE
    if image.end > rtas:
        raise LkvmError(f"-m {mib}: the kernel takes {-(-image.end >> 20)} MiB and lkvm "
                        "the top 68 KiB of RAM; give the guest more")
    for seg in image.segments:
        vm.mem.write(seg.paddr, seg.data)
        vm.mem.view(seg.paddr + len(seg.data), seg.memsz - len(seg.data))[:] = \
            bytes(seg.memsz - len(seg.data))
    vm.mem.write(rtas, BLOB)
    placed = None
    if initrd is not None:
        start = (rtas - len(initrd)) & ~(SZ_4K - 1)
        if start < image.end:
            raise LkvmError(f"-m {mib}: the initrd ({len(initrd) >> 10} KiB) does not fit "
                            "between the kernel and the device tree; give the guest more RAM")
        vm.mem.write(start, initrd)
        placed = (start, start + len(initrd))
    return PpcBoot(image.entry, dtb, rtas, cmdline, placed)
