"""Where an arm64 Image, its initrd and the device tree go in guest RAM:
the Image at a 2 MiB aligned base plus its text_offset (RAM's start), the
device tree in the top 2 MiB, the initrd right below it."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from arm import vcpu as regs
from arm.image import PAGE, Image
from arm.layout import FDT_MAX_SIZE, RAM_START, SZ_2M
from kvm.errors import LkvmError

if TYPE_CHECKING:
    from kvm.vcpu import Vcpu
    from kvm.vm import Vm


@dataclass(frozen=True)
class ArmBoot:
    entry: int
    dtb: int
    cmdline: str
    initrd: tuple[int, int] | None   # [start, end)

    def setup_vcpu(self, vcpu: "Vcpu") -> None:
        if vcpu.id == 0:  # the others wait powered off for PSCI CPU_ON
            regs.enter(vcpu, self.entry, self.dtb)


def load(vm: "Vm", image: Image, initrd: bytes | None, cmdline: str) -> ArmBoot:
    mib = vm.ram_size >> 20
    entry = RAM_START + image.text_offset
    kernel_end = entry + image.size
    dtb = (RAM_START + vm.ram_size - FDT_MAX_SIZE) & ~(SZ_2M - 1)
    if dtb < kernel_end:
        raise LkvmError(f"-m {mib}: the Image takes {-(-(kernel_end - RAM_START) >> 20)} MiB "
                        "and the device tree the top 2 MiB of RAM; give the guest more")
    vm.mem.write(entry, image.data)
    placed = None
    if initrd is not None:
        start = (dtb - len(initrd)) & ~(PAGE - 1)
        if start < kernel_end:
            raise LkvmError(f"-m {mib}: the initrd ({len(initrd) >> 10} KiB) does not fit "
                            "between the Image and the device tree; give the guest more RAM")
        vm.mem.write(start, initrd)
        placed = (start, start + len(initrd))
    return ArmBoot(entry, dtb, cmdline, placed)
