"""bzImage kernels (Linux boot protocol, Documentation/arch/x86/boot.rst).

Two ways in: through the real-mode setup code at 1000:0200, as kvmtool
and a PC boot loader do (the setup code asks the BIOS for the memory
map), or straight into the 64-bit entry with a zero page lkvm fills in,
which skips the setup code and the BIOS altogether.
"""

from include.uapi import lib
from kvm.errors import LkvmError
from x86 import cpu, longmode, zeropage
from x86.layout import CMDLINE_ADDR, KERNEL_ADDR, SETUP_ADDR, SETUP_SEG, ZERO_PAGE_ADDR

MAGIC = b"HdrS"
MIN_VERSION = 0x206  # cmdline_size; what kvmtool asks for too
MIN_VERSION_64 = 0x20C  # xloadflags
DEFAULT_SETUP_SECTS = 4
SECTOR = 512
LOADER_UNDEFINED = 0xFF  # type_of_loader: "no assigned ID"
NORMAL_VGA = 0xFFFF  # vid_mode: keep the current text mode
SETUP_ENTRY = 0x200
ENTRY_64 = 0x200  # the 64-bit entry's offset past code32_start
# Real-mode stack at the top of the setup segment; the heap ends 2 KiB
# below it (heap_end_ptr is "end of heap minus 0x200").
SETUP_SP = 0xFFF0
SETUP_HEAP_END = SETUP_SP - 0x800 - 0x200
INITRD_ALIGN = 1 << 20  # kvmtool steps down 1 MiB at a time


class BzImage:
    name = "bzImage"
    modes = ("64", "realmode")

    @staticmethod
    def probe(image: bytes) -> bool:
        return image[zeropage.MAGIC_OFFSET:zeropage.MAGIC_OFFSET + len(MAGIC)] == MAGIC

    def __init__(self, vm: object, image: bytes, initrd: bytes | None, cmdline: str,
                 mode: str, rsdp: int | None) -> None:
        hdr = zeropage.header(image)
        if hdr.version < MIN_VERSION:
            raise LkvmError(f"boot protocol {hdr.version >> 8}.{hdr.version & 0xff:02x} is "
                            f"too old: lkvm needs 2.06 or later")
        if not hdr.loadflags & lib.LOADED_HIGH:
            raise LkvmError("a zImage (loaded low) is not supported: use a bzImage")
        setup_size = ((hdr.setup_sects or DEFAULT_SETUP_SECTS) + 1) * SECTOR
        kernel = image[setup_size:setup_size + hdr.syssize * 16]
        if len(kernel) < hdr.syssize * 16 or not kernel:
            raise LkvmError(f"the bzImage is truncated: {len(image)} bytes, its header "
                            f"says {setup_size + hdr.syssize * 16}")
        if mode == "auto":
            mode = "64" if self.can_64(hdr) else "realmode"
        if mode == "64" and not self.can_64(hdr):
            raise LkvmError("this kernel has no 64-bit entry (boot protocol 2.12 and "
                            "XLF_KERNEL_64 needed): use --boot-mode realmode")
        self.mode = mode
        mem, ram_top = vm.mem, vm.mem.regions[0].end
        kernel_end = KERNEL_ADDR + max(len(kernel), hdr.init_size)
        if kernel_end > ram_top:
            raise LkvmError(f"-m {vm.ram_size >> 20}: this kernel needs at least "
                            f"{(kernel_end + (1 << 20) - 1) >> 20} MiB of RAM")
        if len(cmdline) > hdr.cmdline_size:
            raise LkvmError(f"the kernel command line is {len(cmdline)} bytes; this kernel "
                            f"takes at most {hdr.cmdline_size}")
        mem.write(CMDLINE_ADDR, cmdline.encode() + b"\0")
        mem.write(KERNEL_ADDR, kernel)
        hdr.type_of_loader = LOADER_UNDEFINED
        hdr.cmd_line_ptr = CMDLINE_ADDR
        if initrd is not None:
            hdr.ramdisk_image = self.place_initrd(vm, hdr, len(initrd), kernel_end)
            hdr.ramdisk_size = len(initrd)
            mem.write(hdr.ramdisk_image, initrd)
        if mode == "64":
            mem.write(ZERO_PAGE_ADDR, zeropage.build(hdr, vm.mem.layout(), rsdp,
                                                     vm.framebuffer))
            longmode.write_gdt(mem, longmode.GDT)
            longmode.write_page_tables(mem)
            self.entry = hdr.code32_start + ENTRY_64
        else:
            hdr.heap_end_ptr = SETUP_HEAP_END
            hdr.loadflags |= lib.CAN_USE_HEAP
            hdr.vid_mode = NORMAL_VGA
            mem.write(SETUP_ADDR, image[:setup_size])
            mem.write(SETUP_ADDR + zeropage.HDR_OFFSET,
                      zeropage.header_bytes(hdr, image))
            self.entry = SETUP_ENTRY

    @staticmethod
    def can_64(hdr: object) -> bool:
        return hdr.version >= MIN_VERSION_64 and bool(hdr.xloadflags & lib.XLF_KERNEL_64)

    @staticmethod
    def place_initrd(vm: object, hdr: object, size: int, kernel_end: int) -> int:
        """As high as the kernel allows and RAM below 4 GiB reaches."""
        top = min(hdr.initrd_addr_max + 1, vm.mem.regions[0].end)
        addr = (top - size) & ~(INITRD_ALIGN - 1)
        if size > top or addr < kernel_end:
            raise LkvmError(f"the {size >> 20} MiB initrd does not fit in "
                            f"{vm.ram_size >> 20} MiB of RAM with this kernel")
        return addr

    def setup_vcpu(self, vcpu: object) -> None:
        if vcpu.id:
            return  # application processors wait for the boot CPU's INIT/SIPI
        if self.mode == "64":
            longmode.enter_64(vcpu, self.entry, ZERO_PAGE_ADDR)
        else:
            cpu.real_mode(vcpu, SETUP_SEG, self.entry, SETUP_SP)

