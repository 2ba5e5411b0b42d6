"""Flat binaries: raw code loaded at 1000:0000 and entered in real mode,
as kvmtool runs them.  Every vCPU starts there; code tells them apart by
the APIC ID that CPUID reports."""

from kvm.errors import LkvmError
from x86 import cpu
from x86.layout import BOOT_LOADER_IP, BOOT_LOADER_SELECTOR, BOOT_LOADER_SP

LOAD_ADDR = (BOOT_LOADER_SELECTOR << 4) + BOOT_LOADER_IP


class FlatBinary:
    name = "flat binary"

    @staticmethod
    def probe(image: bytes) -> bool:
        return True

    def __init__(self, vm: object, image: bytes, initrd: bytes | None, cmdline: str) -> None:
        if LOAD_ADDR + len(image) > vm.ram_size:
            raise LkvmError(f"a {len(image)}-byte flat binary does not fit in "
                            f"{vm.ram_size >> 20} MiB of RAM")
        vm.mem.write(LOAD_ADDR, image)

    def setup_vcpu(self, vcpu: object) -> None:
        cpu.real_mode(vcpu, BOOT_LOADER_SELECTOR, BOOT_LOADER_IP, BOOT_LOADER_SP)
        if vcpu.id:
            cpu.make_runnable(vcpu)
