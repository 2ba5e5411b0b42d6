"""Flat binaries: raw code loaded at 1000:0000 and entered in real mode,
as kvmtool runs them.  The boot CPU starts there; the others wait for
INIT and STARTUP IPIs, as on a PC, so a binary written for one CPU runs
once whatever -c says (tests/guests/smp.S starts them)."""

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
