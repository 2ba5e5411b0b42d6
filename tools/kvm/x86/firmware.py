"""-f/--firmware: a flat firmware image in place of the PC's BIOS, as
kvmtool's x86/boot.c loads one: at 0xE0000, the 128 KiB below 1 MiB, and
entered where a PC's CPU comes out of reset, F000:FFF0 (so a full-size
image has its reset vector in its last 16 bytes)."""

from kvm.errors import LkvmError
from x86 import cpu
from x86.layout import BIOS_END

FIRMWARE_START = 0xE0000
FIRMWARE_SIZE = BIOS_END - FIRMWARE_START
RESET_SELECTOR, RESET_IP = 0xF000, 0xFFF0
FIRMWARE_SP = 0x8000    # kvmtool's BIOS_SP


class Firmware:
    name = "firmware image"

    def __init__(self, vm: object, image: bytes) -> None:
        if len(image) > FIRMWARE_SIZE:
            raise LkvmError(f"firmware image is too big to fit in memory "
                            f"({len(image) // 1024} KiB, at most {FIRMWARE_SIZE // 1024})")
        if vm.ram_size < BIOS_END:
            raise LkvmError(f"-m {vm.ram_size >> 20}: firmware sits below 1 MiB and needs "
                            "RAM up to it")
        vm.mem.write(FIRMWARE_START, image)

    def setup_vcpu(self, vcpu: object) -> None:
        cpu.real_mode(vcpu, RESET_SELECTOR, RESET_IP, FIRMWARE_SP)
