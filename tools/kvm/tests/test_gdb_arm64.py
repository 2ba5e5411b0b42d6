"""The gdb stub's aarch64 target where no arm64 KVM is: its ONE_REG ids
against the arm64 uapi headers' own macros (evaluated by the cross
compiler), the stage-1 walk on hand-built tables, the debug registers'
values, the stop reasons and exception entry on a register file in a dict,
and its target description as gdb-multiarch reads it."""

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from arm.gdb import (
    BCR_EXECUTE,
    CPSR,
    PC,
    REGISTERS,
    SP,
    SYSREGS,
    Arm64Gdb,
    RegIds,
    bcr_bvr,
    wcr_wvr,
)
from arm.pagetable import Regime, walk
from kvm.errors import GuestError
from kvm.gdb.target import HwPoint, Stop, Watch

CROSS = "aarch64-linux-gnu-"
needs_cross = pytest.mark.skipif(shutil.which(CROSS + "gcc") is None,
                                 reason="no aarch64 cross compiler")
GDB = shutil.which("gdb-multiarch")


def cross_values(exprs: list[str]) -> list[int]:
    """Integer C expressions as the arm64 uapi headers make them: compiled
    into an object's data, which is read back."""
    source = "#include <stddef.h>\n#include <linux/kvm.h>\nunsigned long long v[] = {" + \
        ",".join(f"(unsigned long long)({e})" for e in exprs) + "};\n"
    with tempfile.TemporaryDirectory() as d:
        obj, data = Path(d, "v.o"), Path(d, "v.bin")
        subprocess.run([CROSS + "gcc", "-c", "-x", "c", "-", "-o", obj], input=source.encode(),
                       check=True, timeout=60)
        subprocess.run([CROSS + "objcopy", "-O", "binary", "-j", ".data", obj, data],
                       check=True, timeout=60)
        return list(struct.unpack(f"<{len(exprs)}Q", data.read_bytes()))


class CrossUapi:
    """(ffi, lib) for arm64 with only what RegIds uses: a first pass
    collects the expressions it asks for, the cross compiler answers them
    at once, the second pass gets the values."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.asked: list[str] = []
        uapi = self

        class Lib:
            def __getattr__(self, name: str) -> int:
                return uapi.value(name)

        class Ffi:
            def offsetof(self, struct_name: str, *path: str | int) -> int:
                member = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
                return uapi.value(f"offsetof({struct_name}, {member[1:]})")

        self.ffi, self.lib = Ffi(), Lib()

    def value(self, expr: str) -> int:
        if expr not in self.values:
            self.asked.append(expr)
        return self.values.get(expr, 0)

    def ids(self) -> RegIds:
        RegIds(self.ffi, self.lib)
        self.values.update(zip(self.asked, cross_values(self.asked), strict=True))
        self.asked = []
        ids = RegIds(self.ffi, self.lib)
        assert not self.asked  # the first pass's zeros asked for the same things
        return ids


@pytest.fixture(scope="module")
def ids() -> RegIds:
    if shutil.which(CROSS + "gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    return CrossUapi().ids()


def core(size: str, member: str) -> str:
    return f"KVM_REG_ARM64 | KVM_REG_SIZE_{size} | KVM_REG_ARM_CORE | " \
           f"KVM_REG_ARM_CORE_REG({member})"


def test_register_ids_are_the_headers(ids):
    members = [*(("U64", f"regs.regs[{i}]") for i in range(31)), ("U64", "regs.sp"),
               ("U64", "regs.pc"), ("U64", "regs.pstate"),
               *(("U128", f"fp_regs.vregs[{i}]") for i in range(32)),
               ("U32", "fp_regs.fpsr"), ("U32", "fp_regs.fpcr"),
               ("U64", "sp_el1"), ("U64", "elr_el1"), ("U64", "spsr[KVM_SPSR_EL1]")]
    sysregs = [f"ARM64_SYS_REG({', '.join(map(str, enc))})" for enc in SYSREGS.values()]
    want = cross_values([core(*m) for m in members] + sysregs)
    got = ids.registers + [ids.sp_el1, ids.elr_el1, ids.spsr_el1] + list(ids.sys.values())
    assert [hex(x) for x in got] == [hex(x) for x in want]
    assert [ids.size(r) for r in ids.registers] == [r.bits // 8 for r in REGISTERS[:CPSR]] + \
        [8] + [16] * 32 + [4, 4]  # pstate is 64 bits in KVM, cpsr 32 in gdb


@needs_cross
def test_system_register_encodings_are_the_assemblers():
    """MRS's fields are op0 (bit 19, plus 2), op1, CRn, CRm, op2."""
    with tempfile.TemporaryDirectory() as d:
        src, obj, data = Path(d, "s.S"), Path(d, "s.o"), Path(d, "s.bin")
        src.write_text("".join(f"mrs x0, {name}\n" for name in SYSREGS))
        subprocess.run([CROSS + "as", "-o", obj, src], check=True, timeout=60)
        subprocess.run([CROSS + "objcopy", "-O", "binary", "-j", ".text", obj, data],
                       check=True, timeout=60)
        words = struct.unpack(f"<{len(SYSREGS)}I", data.read_bytes())
    decoded = [(2 + (w >> 19 & 1), w >> 16 & 7, w >> 12 & 15, w >> 8 & 15, w >> 5 & 7)
               for w in words]
    assert decoded == list(SYSREGS.values())


# The walk, on tables in a dict of descriptors.
TABLE, BLOCK, PAGE = 0b11, 0b01, 0b11
GRANULE_4K = 0b00 << 14 | 0b10 << 30  # TG0, TG1
TCR_48 = 16 | 16 << 16 | GRANULE_4K   # T0SZ, T1SZ: 48-bit halves
MMU_ON = 1
KERNEL = 0xFFFF800008010000


class Tables:
    def __init__(self) -> None:
        self.desc: dict[int, int] = {}

    def set(self, table: int, index: int, value: int) -> None:
        self.desc[table + 8 * index] = value

    def read64(self, gpa: int) -> int:
        if gpa >= 1 << 32:
            raise GuestError(f"{gpa:#x} is outside RAM")
        return self.desc.get(gpa, 0)


@pytest.fixture
def tables() -> Tables:
    t = Tables()
    t.set(0x1000, 0, 0x2000 | TABLE)          # TTBR0's level 0
    t.set(0x2000, 1, 0xC0000000 | BLOCK)      # 1 GiB at level 1
    t.set(0x2000, 0, 0x3000 | TABLE)
    t.set(0x3000, 0, 0x4000 | TABLE)
    t.set(0x4000, 5, 0x80005000 | PAGE | 0x700)  # attributes above the flags
    t.set(0x4000, 6, 0x80006000 | BLOCK)     # reserved at level 3
    t.set(0x3000, 2, 0x200000000 | TABLE)    # a table outside RAM
    t.set(0x8000, 0x100, 0x9000 | TABLE)      # TTBR1's level 0
    t.set(0x9000, 0, 0xA000 | TABLE)
    t.set(0xA000, 0x40, 0x40200000 | BLOCK)   # 2 MiB at level 2
    t.set(0x1000, 1, 0x40000000 | BLOCK)      # a block at level 0: reserved
    return t


def regime(tcr: int = TCR_48, sctlr: int = MMU_ON) -> Regime:
    return Regime(sctlr, tcr, 0x1000, 0xABCD << 48 | 0x8000)  # an ASID in TTBR1


def test_walk_4k_pages_and_blocks_through_both_halves(tables):
    def at(va: int, r: Regime | None = None) -> int | None:
        return walk(tables.read64, r or regime(), va)

    assert at(0x5123) == 0x80005123
    assert at(0x40001234) == 0xC0001234
    assert at(0x7FFF_4000_1234) is None       # level 0 entry 0xff: invalid
    assert at(KERNEL) == 0x40210000
    assert at(0x6000) is None                 # reserved page descriptor
    assert at(0x400000) is None               # its table lies outside RAM
    assert at(1 << 39) is None                # reserved block at level 0
    assert at(0x0001_0000_0000_5123) is None  # between the halves
    assert at(0x5A00_0000_0000_5123) is None  # a tag, TBI0 off
    assert at(0x5A00_0000_0000_5123, regime(TCR_48 | 1 << 37)) == 0x80005123
    assert at(KERNEL, regime(TCR_48 | 1 << 23)) is None  # EPD1: no walks of TTBR1
    assert at(0x5123, regime(sctlr=0)) == 0x5123  # the MMU off: identity
    assert at(KERNEL, regime(sctlr=0)) is None


def test_walk_39_bit_and_64k_granule(tables):
    # T0SZ 25: 39 bits, the walk starts at level 1 (table 0x2000).
    r = Regime(MMU_ON, 25 | GRANULE_4K, 0x2000, 0)
    assert walk(tables.read64, r, 0x40001234) == 0xC0001234
    assert walk(tables.read64, r, 1 << 39) is None  # above 39 bits
    # 64 KiB pages, 42 bits: levels 2 and 3, 13 bits each.
    t = Tables()
    t.set(0x10000, 0x10, 0x20000 | TABLE)
    t.set(0x20000, 1, 0x90000000 | PAGE)
    r = Regime(MMU_ON, 22 | 0b01 << 14, 0x10000, 0)
    assert walk(t.read64, r, 0x2_0001_2345) == 0x90002345


def test_debug_register_values():
    assert bcr_bvr(HwPoint(Watch.EXECUTE, 0xFFFF800008010000, 4)) == \
        (BCR_EXECUTE, 0xFFFF800008010000)
    assert BCR_EXECUTE == 0x1E7  # E, PMC EL1+EL0, BAS all four bytes
    # E | PAC 0b11 | LSC << 3 | BAS << 5, DBGWVR the doubleword.
    assert wcr_wvr(HwPoint(Watch.WRITE, 0x2004, 4)) == (1 | 6 | 2 << 3 | 0xF0 << 5, 0x2000)
    assert wcr_wvr(HwPoint(Watch.READ, 0x3000, 8)) == (1 | 6 | 1 << 3 | 0xFF << 5, 0x3000)
    assert wcr_wvr(HwPoint(Watch.ACCESS, 0x4007, 1)) == (1 | 6 | 3 << 3 | 0x80 << 5, 0x4000)
    for bad in (HwPoint(Watch.WRITE, 0x2006, 4), HwPoint(Watch.WRITE, 0x2000, 16),
                HwPoint(Watch.WRITE, 0x2000, 0)):
        with pytest.raises(ValueError):
            wcr_wvr(bad)
    for bad in (HwPoint(Watch.EXECUTE, 0x1002, 4), HwPoint(Watch.EXECUTE, 0x1000, 2)):
        with pytest.raises(ValueError):
            bcr_bvr(bad)


# The target on a register file in a dict.
class FakeFfi:
    def new(self, ctype: str) -> object:
        assert ctype == "struct kvm_guest_debug *"
        return SimpleNamespace(control=0, arch=SimpleNamespace(
            **{f"dbg_{r}": [0] * 16 for r in ("bcr", "bvr", "wcr", "wvr")}))


class DictTarget(Arm64Gdb):
    def __init__(self, ids: RegIds, lib: object) -> None:
        self.ffi, self.lib, self.ids = FakeFfi(), lib, ids
        self.breakpoints, self.watchpoints = 6, 4
        self.HW_SLOTS = 10
        self.regs: dict[int, bytes] = {}

    def get(self, vcpu: object, reg: int) -> bytes:
        return self.regs.get(reg, bytes(self.ids.size(reg)))

    def put(self, vcpu: object, reg: int, value: bytes) -> None:
        assert len(value) <= self.ids.size(reg)
        self.regs[reg] = value.ljust(self.ids.size(reg), b"\0")


@pytest.fixture
def target(ids) -> DictTarget:
    lib = SimpleNamespace(**{n: 1 << i for i, n in enumerate(
        ("KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP", "KVM_GUESTDBG_USE_SW_BP",
         "KVM_GUESTDBG_USE_HW"))})
    return DictTarget(ids, lib)


def exit_with(hsr: int, far: int = 0) -> object:
    return SimpleNamespace(run=SimpleNamespace(debug=SimpleNamespace(
        arch=SimpleNamespace(hsr=hsr, far=far))))


def test_sp_is_the_one_in_use(target):
    ids = target.ids
    target.put64(None, ids.registers[SP], 0x1111)
    target.put64(None, ids.sp_el1, 0x2222)
    target.put64(None, ids.registers[CPSR], 0x3C5)  # EL1h, DAIF masked
    regs = target.read_registers(None)
    assert regs[SP] == (0x2222).to_bytes(8, "little") and regs[CPSR] == b"\xc5\x03\0\0"
    assert len(regs) == 68 and [len(r) for r in regs] == target.sizes
    target.write_register(None, SP, (0x3333).to_bytes(8, "little"))
    assert target.get64(None, ids.sp_el1) == 0x3333
    target.put64(None, ids.registers[CPSR], 0x3C4)  # EL1t: SP_EL0
    assert target.read_registers(None)[SP] == (0x1111).to_bytes(8, "little")
    target.write_register(None, CPSR, b"\x05\0\0\0")  # gdb's 32 bits, KVM's 64
    assert target.get64(None, ids.registers[CPSR]) == 5


def test_stop_reasons_by_exception_class(target):
    target.put64(None, target.ids.registers[PC], 0x80001000)
    hw = [HwPoint(Watch.EXECUTE, 0x80000000, 4), HwPoint(Watch.READ, 0x9000, 8),
          HwPoint(Watch.WRITE, 0x9010, 4)]
    assert target.stop_reason(exit_with(0x3C << 26), hw) == Stop("swbreak", 0x80001000)
    assert target.stop_reason(exit_with(0x30 << 26 | 0x22), hw) == Stop("hwbreak")
    assert target.stop_reason(exit_with(0x32 << 26 | 0x22), hw) == Stop()
    assert target.stop_reason(exit_with(0x34 << 26, 0x9012), hw) == Stop("watch", 0x9010)
    assert target.stop_reason(exit_with(0x34 << 26, 0x9004), hw) == Stop("rwatch", 0x9000)


def test_guest_debug_control_and_slots(target):
    hw = [HwPoint(Watch.EXECUTE, 0x1000, 4), HwPoint(Watch.ACCESS, 0x2000, 8)]
    dbg = target.guest_debug(True, True, hw)
    assert dbg.control == 0b1111
    assert dbg.arch.dbg_bcr[:2] == [BCR_EXECUTE, 0] and dbg.arch.dbg_bvr[0] == 0x1000
    assert dbg.arch.dbg_wcr[0] == 1 | 6 | 3 << 3 | 0xFF << 5 and dbg.arch.dbg_wvr[0] == 0x2000
    assert target.guest_debug(False, False, []).control == 0
    with pytest.raises(ValueError):
        target.guest_debug(False, False, [HwPoint(Watch.WRITE, 0x100 * i, 8)
                                          for i in range(5)])


def test_the_guests_own_brk_enters_its_vector(target):
    """Linux's BUG() is a BRK: handed back, the guest takes it as its own
    synchronous exception to EL1."""
    ids = target.ids
    for pstate, offset in ((0x3C5, 0x200), (0x3C4, 0x0), (0x0, 0x400)):
        target.put64(None, ids.registers[PC], 0xFFFF800008123456)
        target.put64(None, ids.registers[CPSR], pstate)
        target.put64(None, ids.sys["vbar_el1"], 0xFFFF800008010800)
        target.pass_trap(exit_with(0x3C << 26 | 0x800))
        assert target.get64(None, ids.registers[PC]) == 0xFFFF800008010800 + offset
        assert target.get64(None, ids.registers[CPSR]) == 0x3C5
        assert target.get64(None, ids.elr_el1) == 0xFFFF800008123456
        assert target.get64(None, ids.spsr_el1) == pstate
        assert target.get64(None, ids.sys["esr_el1"]) == 0x3C << 26 | 0x800


@pytest.mark.skipif(GDB is None, reason="no gdb-multiarch")
def test_gdb_multiarch_reads_the_description(tmp_path):
    xml = tmp_path / "target.xml"
    xml.write_bytes(Arm64Gdb.features["target.xml"])
    out = subprocess.run([GDB, "-batch", "-nx", "-ex", f"set tdesc filename {xml}",
                          "-ex", "show architecture", "-ex", "maint print registers"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and "warning" not in out.stderr.lower(), out.stderr
    assert '(currently "aarch64")' in out.stdout, out.stdout
    regs = {m[0]: (int(m[1]), int(m[2])) for m in
            re.findall(r"^ (\w+) +(\d+) +\d+ +\d+ +(\d+) ", out.stdout, re.M)}
    assert [regs[r.name] for r in REGISTERS] == [
        (i, r.bits // 8) for i, r in enumerate(REGISTERS)]
    # gdb made its pseudo registers from the fpu feature: it took it.
    assert {"q31", "d0", "s0", "w30"} <= set(regs)
