"""The zero page (struct boot_params) that lkvm hands a kernel it enters
in 64-bit mode, as a boot loader would after running the setup code."""

from hw.vesa import Framebuffer
from include.uapi import ffi, lib
from x86.e820 import e820_map

# The setup header sits where struct boot_params has it (0x1f1) in a
# bzImage, and ends after the "HdrS" magic plus the byte the jump before
# the magic skips: Documentation/arch/x86/boot.rst.
HDR_OFFSET = ffi.offsetof("struct boot_params", "hdr")
MAGIC_OFFSET = HDR_OFFSET + ffi.offsetof("struct setup_header", "header")
# screen_info.lfb_size counts 64 KiB for a VESA linear framebuffer.
VLFB_SIZE_UNIT = 64 << 10
JUMP_REL8 = HDR_OFFSET + ffi.offsetof("struct setup_header", "jump") + 1


def _header_len(image: bytes) -> int:
    end = MAGIC_OFFSET + image[JUMP_REL8]
    return min(end, HDR_OFFSET + ffi.sizeof("struct setup_header")) - HDR_OFFSET


def header(image: bytes) -> object:
    """The image's setup header as a `struct setup_header *` (a copy); the
    fields past what this kernel's header has read as zero."""
    hdr = ffi.new("struct setup_header *")
    n = _header_len(image)
    ffi.memmove(hdr, image[HDR_OFFSET:HDR_OFFSET + n], n)
    return hdr


def header_bytes(hdr: object, image: bytes) -> bytes:
    """`hdr` as the image's own header has room for."""
    return bytes(ffi.buffer(hdr))[:_header_len(image)]


def describe_framebuffer(bp: object, addr: int, fb: Framebuffer) -> None:
    """A linear framebuffer, as a boot loader that set a VESA mode leaves
    it in screen_info for Linux's efifb/vesafb (x8r8g8b8)."""
    si = bp.screen_info
    si.orig_video_isVGA = lib.VIDEO_TYPE_VLFB
    si.lfb_width, si.lfb_height, si.lfb_depth = fb.width, fb.height, 32
    si.lfb_linelength = fb.stride
    si.lfb_base = addr
    si.lfb_size = -(-fb.stride * fb.height // VLFB_SIZE_UNIT)
    si.red_size = si.green_size = si.blue_size = si.rsvd_size = 8
    si.red_pos, si.green_pos, si.blue_pos, si.rsvd_pos = 16, 8, 0, 24
    si.pages = 1


def build(hdr: object, regions: list[tuple[int, int]], rsdp: int | None,
          framebuffer: tuple[int, Framebuffer] | None = None) -> bytes:
    bp = ffi.new("struct boot_params *")
    bp.hdr = hdr[0]
    e820 = e820_map(regions)
    for i, (addr, size, kind) in enumerate(e820):
        bp.e820_table[i] = {"addr": addr, "size": size, "type": kind}
    bp.e820_entries = len(e820)
    if rsdp is not None:
        bp.acpi_rsdp_addr = rsdp
    if framebuffer is not None:
        describe_framebuffer(bp, *framebuffer)
    return bytes(ffi.buffer(bp))
