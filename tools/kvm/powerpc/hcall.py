"""PAPR hypercalls that KVM leaves to lkvm (KVM_EXIT_PAPR_HCALL): a table
from the call's number to its handler.

A handler takes the call's arguments (r4 on, as KVM hands them over) and
returns its status (r3) and outputs (r4 on).  Everything in the arguments
is the guest's to choose: a handler checks it and answers a bad one with
an error code, never an exception.  The numbers and codes are PAPR's (the
kernel's asm/hvcall.h, which is not uapi); 0xf000 is the private call
QEMU and kvmtool give RTAS, whose blob makes it (rtas.py).
"""

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from kvm.errors import GuestError
from kvm.memory import GuestMemory
from powerpc.tce import TceTable

# Status codes.
H_SUCCESS = 0
H_HARDWARE = -1
H_FUNCTION = -2
H_PARAMETER = -4
H_P2, H_P3, H_P4 = -55, -56, -57
H_UNSUPPORTED_FLAG = -256

# Calls.
H_GET_TCE = 0x1C
H_PUT_TCE = 0x20
H_STUFF_TCE = 0x138
H_PUT_TCE_INDIRECT = 0x13C
H_GET_TERM_CHAR = 0x54
H_PUT_TERM_CHAR = 0x58
H_LOGICAL_CI_LOAD = 0x3C
H_LOGICAL_CI_STORE = 0x40
H_RANDOM = 0x300
H_SET_MODE = 0x31C
H_REGISTER_PROC_TBL = 0x37C
KVMPPC_H_RTAS = 0xF000

# H_SET_MODE: the endianness of interrupts (LPCR[ILE]).
H_SET_MODE_RESOURCE_LE = 4
H_SET_MODE_ENDIAN_BIG, H_SET_MODE_ENDIAN_LITTLE = 0, 1

# H_REGISTER_PROC_TBL's flags (PAPR 14.5.4.3): what the table is, and the
# largest table size (2^(12 + n) bytes) the architecture allows.
PROC_TABLE_OP_MASK, PROC_TABLE_NEW = 0x18, 0x18
PROC_TABLE_RADIX, PROC_TABLE_GTSE = 0x04, 0x01
PROC_TABLE_MAX_SIZE = 24

# Two registers of characters per H_PUT_TERM_CHAR / H_GET_TERM_CHAR.
TERM_CHARS = 16

Result = tuple[int, ...]        # (status, outputs...)


class Platform(Protocol):
    """What the hypercalls act on: lkvm's side of the sPAPR machine."""
    mem: GuestMemory
    tces: TceTable          # the PCI host bridge's DMA window

    def term_write(self, termno: int, data: bytes) -> bool:
        """Output to the terminal `termno`; False if there is none."""

    def term_read(self, termno: int, limit: int) -> bytes | None:
        """At most `limit` bytes of input; None if there is no such terminal."""

    def set_interrupt_endian(self, little: bool) -> None: ...

    def configure_radix(self, process_table: int, gtse: bool) -> bool:
        """The guest's radix process table; False if KVM refused it."""

    def rtas(self, args_addr: int) -> int:
        """Run the RTAS call whose arguments are at `args_addr`."""

    def mmio_read(self, addr: int, size: int) -> int:
        """A device register; all ones where no device answers."""

    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


Handler = Callable[[Platform, Sequence[int]], Result]


def chars(a: int, b: int, length: int) -> bytes:
    """The first `length` characters of two registers, big-endian as PAPR
    packs them whatever the guest's endianness."""
    return (a.to_bytes(8, "big") + b.to_bytes(8, "big"))[:length]


def put_term_char(p: Platform, args: Sequence[int]) -> Result:
    termno, length, hi, lo = args[:4]
    if length > TERM_CHARS:
        return (H_PARAMETER,)
    return (H_SUCCESS,) if p.term_write(termno, chars(hi, lo, length)) else (H_PARAMETER,)


def get_term_char(p: Platform, args: Sequence[int]) -> Result:
    data = p.term_read(args[0], TERM_CHARS)
    if data is None:
        return (H_PARAMETER,)
    packed = data.ljust(TERM_CHARS, b"\0")
    return (H_SUCCESS, len(data), int.from_bytes(packed[:8], "big"),
            int.from_bytes(packed[8:], "big"))


def set_mode(p: Platform, args: Sequence[int]) -> Result:
    mflags, resource, value1, value2 = args[:4]
    if resource != H_SET_MODE_RESOURCE_LE:
        return (H_P2,)
    if value1:
        return (H_P3,)
    if value2:
        return (H_P4,)
    if mflags not in (H_SET_MODE_ENDIAN_BIG, H_SET_MODE_ENDIAN_LITTLE):
        return (H_UNSUPPORTED_FLAG,)
    p.set_interrupt_endian(mflags == H_SET_MODE_ENDIAN_LITTLE)
    return (H_SUCCESS,)


def random(p: Platform, args: Sequence[int]) -> Result:
    return (H_SUCCESS, int.from_bytes(os.urandom(8), "little"))


def register_proc_tbl(p: Platform, args: Sequence[int]) -> Result:
    """Radix only: the hash MMU has no process table lkvm would hand on."""
    flags, table, _page_size, size = args[:4]
    if flags & PROC_TABLE_OP_MASK != PROC_TABLE_NEW or not flags & PROC_TABLE_RADIX:
        return (H_PARAMETER,)
    # The table is 2^(12 + size) bytes, and KVM takes its base's bits
    # 12-59 beside the size in one doubleword.
    if size > PROC_TABLE_MAX_SIZE or table & ((1 << 12) - 1) or table >> 60:
        return (H_PARAMETER,)
    return (H_SUCCESS,) if p.configure_radix(table | size, bool(flags & PROC_TABLE_GTSE)) \
        else (H_PARAMETER,)


def ci_load(p: Platform, args: Sequence[int]) -> Result:
    size, addr = args[:2]
    if size not in (1, 2, 4, 8):
        return (H_PARAMETER,)
    return (H_SUCCESS, p.mmio_read(addr, size))


def ci_store(p: Platform, args: Sequence[int]) -> Result:
    size, addr, value = args[:3]
    if size not in (1, 2, 4, 8):
        return (H_PARAMETER,)
    p.mmio_write(addr, size, value & ((1 << 8 * size) - 1))
    return (H_SUCCESS,)


def status(ok: bool) -> Result:
    return (H_SUCCESS,) if ok else (H_PARAMETER,)


def get_tce(p: Platform, args: Sequence[int]) -> Result:
    liobn, ioba = args[:2]
    tce = p.tces.get(liobn, ioba)
    return (H_PARAMETER,) if tce is None else (H_SUCCESS, tce)


def put_tce(p: Platform, args: Sequence[int]) -> Result:
    liobn, ioba, tce = args[:3]
    return status(p.tces.put(liobn, ioba, tce))


def stuff_tce(p: Platform, args: Sequence[int]) -> Result:
    liobn, ioba, tce, npages = args[:4]
    return status(p.tces.put(liobn, ioba, tce, npages))


def put_tce_indirect(p: Platform, args: Sequence[int]) -> Result:
    liobn, ioba, tce_list, npages = args[:4]
    return status(p.tces.put_indirect(p.mem, liobn, ioba, tce_list, npages))


def rtas(p: Platform, args: Sequence[int]) -> Result:
    return (p.rtas(args[0]),)


HCALLS: dict[int, Handler] = {
    H_PUT_TERM_CHAR: put_term_char,
    H_GET_TERM_CHAR: get_term_char,
    H_SET_MODE: set_mode,
    H_RANDOM: random,
    H_REGISTER_PROC_TBL: register_proc_tbl,
    H_LOGICAL_CI_LOAD: ci_load,
    H_LOGICAL_CI_STORE: ci_store,
    H_GET_TCE: get_tce,
    H_PUT_TCE: put_tce,
    H_STUFF_TCE: stuff_tce,
    H_PUT_TCE_INDIRECT: put_tce_indirect,
    KVMPPC_H_RTAS: rtas,
}


def dispatch(p: Platform, nr: int, args: Sequence[int]) -> Result:
    """Run hypercall `nr`; an unknown one is H_FUNCTION, as PAPR says, and
    guest memory the arguments point outside RAM is H_PARAMETER."""
    handler = HCALLS.get(nr)
    if handler is None:
        return (H_FUNCTION,)
    try:
        return handler(p, args)
    except GuestError:
        return (H_PARAMETER,)
