"""Uncompressed vmlinux ELF kernels, entered through PVH: 32-bit protected
mode at the address in the Xen PVH ELF note, with an hvm_start_info that
carries the memory map, the command line and the initrd.  No setup code,
no self-decompression: the fastest way into Linux."""

import struct

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from x86 import longmode
from x86.e820 import e820_map
from x86.layout import CMDLINE_ADDR, KERNEL_ADDR, ZERO_PAGE_ADDR

ELF_MAGIC = b"\x7fELF"
# Xen's public ABI (xen/include/public/elfnote.h, arch-x86/hvm/start_info.h);
# Linux implements it in arch/x86/platform/pvh/.  No uapi header has them.
XEN_NOTE_NAME = b"Xen\0"
XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1  # has the memory map fields
START_INFO = "<IIIIQQQQII"  # magic version flags nr_modules modlist cmdline rsdp memmap entries
MODLIST_ENTRY = "<QQQQ"  # paddr size cmdline_paddr reserved
MEMMAP_ENTRY = "<QQII"  # addr size type reserved
START_INFO_ADDR = ZERO_PAGE_ADDR
MODLIST_ADDR = START_INFO_ADDR + 0x100
MEMMAP_ADDR = START_INFO_ADDR + 0x200
INITRD_ALIGN = 1 << 12
NOTE = "<III"  # namesz descsz type


def _align4(n: int) -> int:
    return (n + 3) & ~3


class Vmlinux:
    name = "vmlinux"
    modes = ("pvh",)

    @staticmethod
    def probe(image: bytes) -> bool:
        return image.startswith(ELF_MAGIC)

    def __init__(self, vm: object, image: bytes, initrd: bytes | None, cmdline: str,
                 mode: str, rsdp: int | None) -> None:
        self.mode = "pvh"
        ehdr = self._struct("Elf64_Ehdr", image, 0)
        if ehdr.e_ident[lib.EI_CLASS] != lib.ELFCLASS64 or ehdr.e_machine != lib.EM_X86_64:
            raise LkvmError("the ELF image is not an x86-64 kernel")
        phdrs = [self._struct("Elf64_Phdr", image, ehdr.e_phoff + i * ehdr.e_phentsize)
                 for i in range(ehdr.e_phnum)]
        self.entry = self._pvh_entry(image, phdrs)
        mem, ram_top = vm.mem, vm.mem.regions[0].end
        kernel_end = KERNEL_ADDR
        data = memoryview(image)  # segments go to the guest without a copy in between
        for ph in phdrs:
            if ph.p_type != lib.PT_LOAD:
                continue
            end = ph.p_paddr + ph.p_memsz
            if ph.p_filesz > ph.p_memsz or ph.p_offset + ph.p_filesz > len(image):
                raise LkvmError("the vmlinux is truncated or its segments are malformed")
            if end > ram_top:
                raise LkvmError(f"-m {vm.ram_size >> 20}: this kernel needs at least "
                                f"{(end + (1 << 20) - 1) >> 20} MiB of RAM")
            mem.write(ph.p_paddr, data[ph.p_offset:ph.p_offset + ph.p_filesz])
            mem.view(ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz)[:] = \
                bytes(ph.p_memsz - ph.p_filesz)
            kernel_end = max(kernel_end, end)
        mem.write(CMDLINE_ADDR, cmdline.encode() + b"\0")
        modules = 0
        if initrd is not None:
            addr = (ram_top - len(initrd)) & ~(INITRD_ALIGN - 1)
            if len(initrd) > ram_top or addr < kernel_end:
                raise LkvmError(f"the {len(initrd) >> 20} MiB initrd does not fit in "
                                f"{vm.ram_size >> 20} MiB of RAM with this kernel")
            mem.write(addr, initrd)
            mem.write(MODLIST_ADDR, struct.pack(MODLIST_ENTRY, addr, len(initrd), 0, 0))
            modules = 1
        e820 = e820_map(mem.layout())
        mem.write(MEMMAP_ADDR, b"".join(struct.pack(MEMMAP_ENTRY, *e, 0) for e in e820))
        mem.write(START_INFO_ADDR, struct.pack(
            START_INFO, HVM_START_MAGIC, HVM_START_VERSION, 0, modules, MODLIST_ADDR,
            CMDLINE_ADDR, rsdp or 0, MEMMAP_ADDR, len(e820), 0))
        longmode.write_gdt(mem, longmode.GDT32)

    @staticmethod
    def _struct(ctype: str, image: bytes, offset: int) -> object:
        size = ffi.sizeof(ctype)
        if offset < 0 or offset + size > len(image):
            raise LkvmError("the ELF image is truncated")
        value = ffi.new(ctype + " *")
        ffi.memmove(value, image[offset:offset + size], size)
        return value

    @staticmethod
    def _pvh_entry(image: bytes, phdrs: list) -> int:
        for ph in phdrs:
            if ph.p_type != lib.PT_NOTE:
                continue
            pos, end = ph.p_offset, min(ph.p_offset + ph.p_filesz, len(image))
            while pos + struct.calcsize(NOTE) <= end:
                namesz, descsz, kind = struct.unpack_from(NOTE, image, pos)
                name = pos + struct.calcsize(NOTE)
                desc = name + _align4(namesz)
                if image[name:name + namesz] == XEN_NOTE_NAME and \
                        kind == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                    return int.from_bytes(image[desc:desc + descsz], "little")
                pos = desc + _align4(descsz)
        raise LkvmError("the vmlinux has no PVH entry note (CONFIG_PVH): lkvm cannot boot it")

    def setup_vcpu(self, vcpu: object) -> None:
        if vcpu.id == 0:
            longmode.enter_32(vcpu, self.entry, START_INFO_ADDR)
