"""A VESA linear framebuffer, as kvmtool's hw/vesa.c: a PCI display
device whose memory BAR is the guest's screen, 640x480 at 32 bits per
pixel (x8r8g8b8).  The memory is a KVM memory slot, so the guest draws
without an exit; a display (ui/vnc.py) reads it from the host side."""

import mmap
from dataclasses import dataclass

from hw.pci import PciDevice
from include.uapi import ffi
from kvm import msg
from kvm.errors import LkvmError

# kvmtool's device: Red Hat/Qumranet's vendor ID and its VESA device ID.
VENDOR, DEVICE = 0x1AF4, 0x2000
CLASS_DISPLAY_VGA = 0x030000        # PCI Code and ID Assignment: VGA-compatible
WIDTH, HEIGHT, BPP = 640, 480, 32
STRIDE = WIDTH * BPP // 8
# A BAR's size is a power of two: the screen rounded up (2 MiB).
MEM_SIZE = 1 << (STRIDE * HEIGHT - 1).bit_length()
# The one video mode it has, as Linux's vid_mode spells VESA mode 0x112.
VIDMODE = 0x312


@dataclass(frozen=True)
class Framebuffer:
    """What a display needs: the pixels and how to read them."""
    pixels: memoryview              # STRIDE * HEIGHT bytes, x8r8g8b8 little-endian
    width: int = WIDTH
    height: int = HEIGHT
    stride: int = STRIDE


class _Unused:
    """The BAR's bus range: the memory slot takes every access, so nothing
    reaches here but a guest racing a BAR move."""

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class Vesa(PciDevice):
    def __init__(self, vm: object) -> None:
        super().__init__(VENDOR, DEVICE, CLASS_DISPLAY_VGA, subsys_vendor=VENDOR)
        self.vm = vm
        self.mem = mmap.mmap(-1, MEM_SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.host = int(ffi.cast("uintptr_t", ffi.from_buffer(self.mem)))
        self.slot = vm.next_slot
        vm.next_slot += 1
        self.bar = self.add_bar(MEM_SIZE, io=False, dev=_Unused())
        self.on_bar_moved.append(lambda index, old, new: self._map(new))
        self.framebuffer = Framebuffer(memoryview(self.mem)[:STRIDE * HEIGHT])
        self.warned = False     # of a guest's BAR over its RAM, said once

    @property
    def addr(self) -> int:
        return self.bars[self.bar].addr

    def plug(self) -> None:
        """Onto the VM's PCI bus, its memory where the bus put the BAR."""
        self.vm.pci.add(self)
        self._map(self.addr)

    def _map(self, gpa: int | None) -> None:
        """The framebuffer's memory slot at `gpa`; None (the BAR does not
        decode) deletes it, a slot of no size.  A guest that puts the BAR
        over its RAM (KVM refuses overlapping slots) finds no framebuffer
        there, only its RAM, and lkvm says so once."""
        if gpa is not None:
            try:
                self.vm.set_memory_slot(self.slot, gpa, MEM_SIZE, self.host)
                return
            except LkvmError as e:
                if not self.warned:
                    msg.warning(f"vesa: the guest moved the framebuffer onto its memory: {e}")
                    self.warned = True
        self.vm.set_memory_slot(self.slot, 0, 0, self.host)
