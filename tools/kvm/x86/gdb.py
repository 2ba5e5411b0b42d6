"""x86-64 for the gdb stub: the registers gdb's amd64 target knows, the
target description naming them, page-table translation and the debug
registers (DR0-3 addresses, DR7 their kinds; Intel SDM vol. 3, ch. 17)."""

import fcntl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from include.uapi import ffi, lib
from kvm.errors import GuestError
from kvm.gdb import target
from kvm.gdb.target import HwPoint, Stop, Watch
from kvm.guestdebug import set_guest_debug
from x86 import pagetable

MSR_KERNEL_GS_BASE = 0xC0000102
DR6_BS = 1 << 14  # single step
DR7_FIXED = 1 << 10
BP_VECTOR, DB_VECTOR = 3, 1
# DR7's R/W field per kind (read-only does not exist: read/write stands in).
DR7_RW = {Watch.EXECUTE: 0, Watch.WRITE: 1, Watch.READ: 3, Watch.ACCESS: 3}
DR7_LEN = {1: 0, 2: 1, 4: 3, 8: 2}
STOP_NAMES = {Watch.EXECUTE: "hwbreak", Watch.WRITE: "watch", Watch.READ: "rwatch",
              Watch.ACCESS: "awatch"}


class State:
    """One vCPU's registers as KVM hands them out, read once per request."""

    def __init__(self, vcpu: object) -> None:
        self.vcpu = vcpu
        self.regs = vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs")
        self.sregs = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
        self.fpu = vcpu.get(lib.KVM_GET_FPU, "struct kvm_fpu")

    def msr(self, index: int, value: int | None = None) -> int:
        """Read an MSR, or write it when given a value."""
        buf = bytearray(struct.pack("<IIIIQ", 1, 0, index, 0, value or 0))
        request = lib.KVM_GET_MSRS if value is None else lib.KVM_SET_MSRS
        fcntl.ioctl(self.vcpu.fd, request, buf, True)
        return struct.unpack_from("<Q", buf, 16)[0]

    def commit(self, part: str) -> None:
        request = {"regs": lib.KVM_SET_REGS, "sregs": lib.KVM_SET_SREGS,
                   "fpu": lib.KVM_SET_FPU}[part]
        self.vcpu.set(request, getattr(self, part))


@dataclass(frozen=True)
class Reg(target.Reg):
    part: str  # the State member it lives in, "msr" for an MSR
    get: Callable[[State], int | bytes]
    put: Callable[[State, int | bytes], None]


def _int(part: str, *path: str, mask: int = (1 << 64) - 1) -> tuple:
    """Accessors of an integer field, e.g. ("sregs", "cs", "selector")."""
    def owner(s: State) -> object:
        o = getattr(s, part)
        for p in path[:-1]:
            o = getattr(o, p)
        return o

    def put(s: State, v: int) -> None:
        o = owner(s)
        setattr(o, path[-1], (getattr(o, path[-1]) & ~mask) | (v & mask))

    return part, lambda s: getattr(owner(s), path[-1]) & mask, put


def _bytes(array: str, index: int, size: int) -> tuple:
    def view(s: State) -> object:
        return ffi.buffer(getattr(s.fpu, array)[index], size)

    def put(s: State, v: bytes) -> None:
        view(s)[:] = v

    return "fpu", lambda s: bytes(view(s)), put


def _msr(index: int) -> tuple:
    return "msr", lambda s: s.msr(index), lambda s, v: s.msr(index, v)


def _ftag(s: State) -> int:
    """The full tag word from FXSAVE's abridged one: 0 valid, 3 empty."""
    return sum((0 if s.fpu.ftwx >> i & 1 else 3) << 2 * i for i in range(8))


def _put_ftag(s: State, v: int) -> None:
    s.fpu.ftwx = sum((v >> 2 * i & 3 != 3) << i for i in range(8))


CORE, SSE = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"
SEGS, SYS = "org.gnu.gdb.i386.segments", "org.lkvm.gdb.x86.sys"
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + \
    tuple(f"r{i}" for i in range(8, 16))
PTR_TYPES = {"rbp": "data_ptr", "rsp": "data_ptr"}

REGISTERS: list[Reg] = [
    *(Reg(n, 64, PTR_TYPES.get(n, "int64"), CORE, *_int("regs", n)) for n in GPRS),
    Reg("rip", 64, "code_ptr", CORE, *_int("regs", "rip")),
    Reg("eflags", 32, "x86_eflags", CORE, *_int("regs", "rflags", mask=0xFFFFFFFF)),
    *(Reg(n, 32, "int32", CORE, *_int("sregs", n, "selector"))
      for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Reg(f"st{i}", 80, "i387_ext", CORE, *_bytes("fpr", i, 10)) for i in range(8)),
    Reg("fctrl", 32, "int", CORE, *_int("fpu", "fcw")),
    Reg("fstat", 32, "int", CORE, *_int("fpu", "fsw")),
    Reg("ftag", 32, "int", CORE, "fpu", _ftag, _put_ftag),
    Reg("fiseg", 32, "int", CORE, "fpu", lambda s: 0, lambda s, v: None),
    Reg("fioff", 32, "int", CORE, *_int("fpu", "last_ip", mask=0xFFFFFFFF)),
    Reg("foseg", 32, "int", CORE, "fpu", lambda s: 0, lambda s, v: None),
    Reg("fooff", 32, "int", CORE, *_int("fpu", "last_dp", mask=0xFFFFFFFF)),
    Reg("fop", 32, "int", CORE, *_int("fpu", "last_opcode")),
    *(Reg(f"xmm{i}", 128, "vec128", SSE, *_bytes("xmm", i, 16)) for i in range(16)),
    Reg("mxcsr", 32, "int", SSE, *_int("fpu", "mxcsr")),
    Reg("fs_base", 64, "int64", SEGS, *_int("sregs", "fs", "base")),
    Reg("gs_base", 64, "int64", SEGS, *_int("sregs", "gs", "base")),
    Reg("k_gs_base", 64, "int64", SYS, *_msr(MSR_KERNEL_GS_BASE)),
    *(Reg(n, 64, "int64", SYS, *_int("sregs", n)) for n in ("cr0", "cr2", "cr3", "cr4",
                                                            "cr8", "efer")),
]

EFLAGS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
          (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
          (19, "VIF"), (20, "VIP"), (21, "ID"))
# Types the features use beyond gdb's predefined ones.
TYPES = {
    CORE: '<flags id="x86_eflags" size="4">' + "".join(
        f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in EFLAGS) + "</flags>",
    SSE: '<vector id="v4f" type="ieee_single" count="4"/>'
         '<vector id="v2d" type="ieee_double" count="2"/>'
         '<vector id="v16i8" type="int8" count="16"/>'
         '<vector id="v8i16" type="int16" count="8"/>'
         '<vector id="v4i32" type="int32" count="4"/>'
         '<vector id="v2i64" type="int64" count="2"/>'
         '<union id="vec128"><field name="v4_float" type="v4f"/>'
         '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
         '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
         '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>'
         "</union>",
}


class X86Gdb:
    features = {"target.xml": target.description("i386:x86-64", REGISTERS, TYPES)}
    sizes = [r.bits // 8 for r in REGISTERS]
    BREAKPOINT = b"\xcc"  # int3
    PC = [r.name for r in REGISTERS].index("rip")
    HW_SLOTS = 4

    def __init__(self, debug_caps: int) -> None:
        # KVM_CAP_SET_GUEST_DEBUG2's flags: keep interrupts out of a step
        # where the host can.
        self.block_irq = debug_caps & lib.KVM_GUESTDBG_BLOCKIRQ
        self._debug: dict[int, object] = {}  # each vCPU's last kvm_guest_debug

    def read_registers(self, vcpu: object) -> list[bytes]:
        s = State(vcpu)
        return [_encode(r, r.get(s)) for r in REGISTERS]

    def write_register(self, vcpu: object, number: int, value: bytes) -> None:
        r = REGISTERS[number]
        s = State(vcpu)
        r.put(s, value if r.type in ("i387_ext", "vec128") else int.from_bytes(value, "little"))
        if r.part != "msr":
            s.commit(r.part)

    def translate(self, vcpu: object, addr: int) -> int | None:
        s = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
        try:
            return pagetable.walk(vcpu.vm.mem, s.cr0, s.cr3, s.cr4, s.efer, addr).physical
        except GuestError:
            return None

    def set_debug(self, vcpu: object, step: bool, sw: bool, hw: list[HwPoint]) -> None:
        dbg = ffi.new("struct kvm_guest_debug *")
        if step or sw or hw:  # else 0: the guest's own debugging is back
            dbg.control = lib.KVM_GUESTDBG_ENABLE | \
                (lib.KVM_GUESTDBG_SINGLESTEP | self.block_irq if step else 0) | \
                (lib.KVM_GUESTDBG_USE_SW_BP if sw else 0) | \
                (lib.KVM_GUESTDBG_USE_HW_BP if hw else 0)
        dbg.arch.debugreg[7] = dr7(hw)
        for i, p in enumerate(hw):
            dbg.arch.debugreg[i] = p.addr
        set_guest_debug(vcpu, dbg)
        self._debug[vcpu.id] = dbg

    def pass_trap(self, vcpu: object) -> None:
        """Hand the guest the int3 it hit, rip still on it: KVM delivers
        it as the guest's own, past the instruction."""
        dbg = ffi.new("struct kvm_guest_debug *", self._debug[vcpu.id][0])
        dbg.control |= lib.KVM_GUESTDBG_INJECT_BP
        set_guest_debug(vcpu, dbg)

    def stop_reason(self, vcpu: object, hw: list[HwPoint]) -> Stop:
        d = vcpu.run.debug.arch
        if d.exception == BP_VECTOR:
            return Stop("swbreak", d.pc)
        for i, p in enumerate(hw):
            if d.dr6 & 1 << i:
                return Stop(STOP_NAMES[p.kind], p.addr if p.kind != Watch.EXECUTE else None)
        return Stop()

    def failed_trap(self, vcpu: object) -> int | None:
        """An int3 at CPL0 on a host that emulates CPL0 code (a nested PVM
        KVM) ends in KVM_INTERNAL_ERROR_EMULATION instead of a debug exit;
        its instruction bytes say so."""
        e = vcpu.run.emulation_failure
        if e.suberror != lib.KVM_INTERNAL_ERROR_EMULATION or \
                not e.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES or \
                not e.insn_size or e.insn_bytes[0] != self.BREAKPOINT[0]:
            return None
        return vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs").rip


def dr7(hw: list[HwPoint]) -> int:
    """DR7 for the points in slots 0.., each enabled locally."""
    value = DR7_FIXED if hw else 0
    for i, p in enumerate(hw):
        if p.length not in DR7_LEN or p.addr % p.length or \
                (p.kind == Watch.EXECUTE and p.length != 1):
            raise ValueError(f"cannot watch {p.length} bytes at {p.addr:#x}")
        value |= 1 << 2 * i | DR7_RW[p.kind] << 16 + 4 * i | DR7_LEN[p.length] << 18 + 4 * i
    return value


def _encode(r: Reg, value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.to_bytes(r.bits // 8, "little")
