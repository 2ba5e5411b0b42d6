"""aarch64 for the gdb stub: the registers of gdb's aarch64 core and fpu
features through KVM_{GET,SET}_ONE_REG, the stage-1 walk of arm/pagetable.py,
BRK #0 for software breakpoints and the debug registers (DBGBCR/DBGBVR,
DBGWCR/DBGWVR; Arm ARM D2) through kvm_guest_debug_arch.

The ONE_REG ids come from the uapi's macros and struct offsets, handed in
as (ffi, lib): on an arm64 host the bindings, in the tests the arm64
headers read by the cross compiler."""

from arm.pagetable import Regime, walk
from kvm.gdb.target import HwPoint, Reg, Stop, Watch, description
from kvm.guestdebug import set_guest_debug
from kvm.ioctl import ioctl

# ESR_ELx's exception classes a debug exit carries (Arm ARM D17.2.37).
ESR_EC_SHIFT = 26
EC_BREAKPOINT, EC_STEP, EC_WATCHPOINT, EC_BRK = 0x30, 0x32, 0x34, 0x3C
# DBGBCR: enabled (E), at EL1 and EL0 (PMC 0b11), on all four bytes of
# the instruction (BAS 0b1111), an unlinked address match (BT 0).
BCR_EXECUTE = 1 | 0b11 << 1 | 0b1111 << 5
# DBGWCR: enabled, at EL1 and EL0 (PAC), LSC the accesses, BAS the bytes
# of the doubleword at DBGWVR.
WCR_LSC = {Watch.READ: 0b01, Watch.WRITE: 0b10, Watch.ACCESS: 0b11}
WATCH_NAMES = {Watch.WRITE: "watch", Watch.READ: "rwatch", Watch.ACCESS: "awatch"}
# PSTATE: M[3:0] the exception level and stack pointer (EL1h: EL1 on
# SP_EL1), and the D, A, I, F masks an exception entry sets.
PSTATE_MODE, PSTATE_EL1T, PSTATE_EL1H, PSTATE_DAIF = 0xF, 0x4, 0x5, 0xF << 6
# Vector table offsets of a synchronous exception taken to EL1, by where
# it came from (Arm ARM D1.10.2): EL1 on SP_EL0, EL1 on SP_EL1, EL0.
VECTOR_OFFSET = {PSTATE_EL1T: 0x0, PSTATE_EL1H: 0x200}
VECTOR_LOWER_EL = 0x400
# The system registers by (op0, op1, CRn, CRm, op2), as MRS names them.
SYSREGS = {
    "sctlr_el1": (3, 0, 1, 0, 0), "ttbr0_el1": (3, 0, 2, 0, 0),
    "ttbr1_el1": (3, 0, 2, 0, 1), "tcr_el1": (3, 0, 2, 0, 2),
    "esr_el1": (3, 0, 5, 2, 0), "vbar_el1": (3, 0, 12, 0, 0),
}


CORE, FPU = "org.gnu.gdb.aarch64.core", "org.gnu.gdb.aarch64.fpu"
REGISTERS: list[Reg] = [
    *(Reg(f"x{i}", 64, "int", CORE) for i in range(31)),
    Reg("sp", 64, "data_ptr", CORE),
    Reg("pc", 64, "code_ptr", CORE),
    Reg("cpsr", 32, "cpsr_flags", CORE),
    *(Reg(f"v{i}", 128, "aarch64v", FPU) for i in range(32)),
    Reg("fpsr", 32, "int", FPU),
    Reg("fpcr", 32, "int", FPU),
]
SP, PC, CPSR = 31, 32, 33

CPSR_FLAGS = ((0, "SP"), (4, "nRW"), (6, "F"), (7, "I"), (8, "A"), (9, "D"), (20, "IL"),
              (21, "SS"), (28, "V"), (29, "C"), (30, "Z"), (31, "N"))
# v0-v31 as gdb shows them: by lane width, each as floats where there is
# a float of that width, unsigned and signed: (name, lanes, [(field, type)]).
LANES = (("d", 2, (("f", "ieee_double"), ("u", "uint64"), ("s", "int64"))),
         ("s", 4, (("f", "ieee_single"), ("u", "uint32"), ("s", "int32"))),
         ("h", 8, (("u", "uint16"), ("s", "int16"))),
         ("b", 16, (("u", "uint8"), ("s", "int8"))),
         ("q", 1, (("u", "uint128"), ("s", "int128"))))


def _vector_types() -> str:
    text = "".join(
        f'<vector id="v{count}{lane}{f}" type="{t}" count="{count}"/>'
        for lane, count, fields in LANES for f, t in fields)
    text += "".join(
        f'<union id="vn{lane}">' + "".join(
            f'<field name="{f}" type="v{count}{lane}{f}"/>' for f, _ in fields) + "</union>"
        for lane, count, fields in LANES)
    return text + '<union id="aarch64v">' + "".join(
        f'<field name="{lane}" type="vn{lane}"/>' for lane, _, _ in LANES) + "</union>"


TYPES = {
    CORE: '<flags id="cpsr_flags" size="4">' + "".join(
        f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in CPSR_FLAGS) +
        '<field name="EL" start="2" end="3"/></flags>',
    FPU: _vector_types(),
}


class RegIds:
    """The ONE_REG ids of what the stub reads: REGISTERS in order (sp as
    SP_EL0), and the rest by name."""

    def __init__(self, ffi: object, lib: object) -> None:
        def core(size: int, *path: str | int, extra: int = 0) -> int:
            offset = ffi.offsetof("struct kvm_regs", *path) + extra
            return lib.KVM_REG_ARM64 | size | lib.KVM_REG_ARM_CORE | offset // 4

        def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
            fields = ((op0, lib.KVM_REG_ARM64_SYSREG_OP0_SHIFT, lib.KVM_REG_ARM64_SYSREG_OP0_MASK),
                      (op1, lib.KVM_REG_ARM64_SYSREG_OP1_SHIFT, lib.KVM_REG_ARM64_SYSREG_OP1_MASK),
                      (crn, lib.KVM_REG_ARM64_SYSREG_CRN_SHIFT, lib.KVM_REG_ARM64_SYSREG_CRN_MASK),
                      (crm, lib.KVM_REG_ARM64_SYSREG_CRM_SHIFT, lib.KVM_REG_ARM64_SYSREG_CRM_MASK),
                      (op2, lib.KVM_REG_ARM64_SYSREG_OP2_SHIFT, lib.KVM_REG_ARM64_SYSREG_OP2_MASK))
            return lib.KVM_REG_ARM64 | lib.KVM_REG_SIZE_U64 | lib.KVM_REG_ARM64_SYSREG | sum(
                value << shift & mask for value, shift, mask in fields)

        u32, u64, u128 = lib.KVM_REG_SIZE_U32, lib.KVM_REG_SIZE_U64, lib.KVM_REG_SIZE_U128
        # The vector registers open struct user_fpsimd_state; cffi cannot
        # name their 128-bit type, so they are counted from the struct.
        self.registers = [
            *(core(u64, "regs", "regs", i) for i in range(31)),
            core(u64, "regs", "sp"), core(u64, "regs", "pc"), core(u64, "regs", "pstate"),
            *(core(u128, "fp_regs", extra=16 * i) for i in range(32)),
            core(u32, "fp_regs", "fpsr"), core(u32, "fp_regs", "fpcr"),
        ]
        self.sp_el1 = core(u64, "sp_el1")
        self.elr_el1 = core(u64, "elr_el1")
        self.spsr_el1 = core(u64, "spsr", lib.KVM_SPSR_EL1)
        self.sys = {name: sysreg(*enc) for name, enc in SYSREGS.items()}
        self.size_mask, self.size_shift = lib.KVM_REG_SIZE_MASK, lib.KVM_REG_SIZE_SHIFT

    def size(self, reg: int) -> int:
        """The register's size in bytes, as its id says."""
        return 1 << ((reg & self.size_mask) >> self.size_shift)


def bcr_bvr(p: HwPoint) -> tuple[int, int]:
    """DBGBCR and DBGBVR of an instruction breakpoint."""
    if p.addr % 4 or p.length != 4:  # one A64 instruction
        raise ValueError(f"cannot break on {p.length} bytes at {p.addr:#x}")
    return BCR_EXECUTE, p.addr


def wcr_wvr(p: HwPoint) -> tuple[int, int]:
    """DBGWCR and DBGWVR of a watchpoint of up to 8 bytes within one
    aligned doubleword."""
    offset = p.addr % 8
    if not 1 <= p.length <= 8 - offset:
        raise ValueError(f"cannot watch {p.length} bytes at {p.addr:#x}")
    bas = (1 << p.length) - 1 << offset
    return 1 | 0b11 << 1 | WCR_LSC[p.kind] << 3 | bas << 5, p.addr - offset


class Arm64Gdb:
    features = {"target.xml": description("aarch64", REGISTERS, TYPES)}
    sizes = [r.bits // 8 for r in REGISTERS]
    BREAKPOINT = (0xD4200000).to_bytes(4, "little")  # BRK #0
    PC = PC

    def __init__(self, ffi: object, lib: object, breakpoints: int, watchpoints: int) -> None:
        self.ffi, self.lib = ffi, lib
        self.ids = RegIds(ffi, lib)
        self.breakpoints, self.watchpoints = breakpoints, watchpoints
        self.HW_SLOTS = breakpoints + watchpoints

    # Register access, one ONE_REG at a time (arm64 has no KVM_GET_REGS).
    def get(self, vcpu: object, reg: int) -> bytes:
        buf = bytearray(self.ids.size(reg))
        self._one_reg(vcpu, self.lib.KVM_GET_ONE_REG, reg, buf)
        return bytes(buf)

    def put(self, vcpu: object, reg: int, value: bytes) -> None:
        self._one_reg(vcpu, self.lib.KVM_SET_ONE_REG, reg,
                      bytearray(value.ljust(self.ids.size(reg), b"\0")))

    def _one_reg(self, vcpu: object, request: int, reg: int, buf: bytearray) -> None:
        ffi = self.ffi
        addr = int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))
        ioctl(vcpu.fd, request, ffi.new("struct kvm_one_reg *", {"id": reg, "addr": addr}))

    def get64(self, vcpu: object, reg: int) -> int:
        return int.from_bytes(self.get(vcpu, reg), "little")

    def put64(self, vcpu: object, reg: int, value: int) -> None:
        self.put(vcpu, reg, value.to_bytes(8, "little"))

    def _sp(self, vcpu: object) -> int:
        """gdb's sp is the one in use: SP_EL1 at EL1h, else SP_EL0."""
        mode = self.get64(vcpu, self.ids.registers[CPSR]) & PSTATE_MODE
        return self.ids.sp_el1 if mode == PSTATE_EL1H else self.ids.registers[SP]

    # The Target protocol.
    def read_registers(self, vcpu: object) -> list[bytes]:
        ids = list(self.ids.registers)
        ids[SP] = self._sp(vcpu)
        return [self.get(vcpu, reg)[:size] for reg, size in zip(ids, self.sizes, strict=True)]

    def write_register(self, vcpu: object, number: int, value: bytes) -> None:
        reg = self._sp(vcpu) if number == SP else self.ids.registers[number]
        self.put(vcpu, reg, value)

    def translate(self, vcpu: object, addr: int) -> int | None:
        regime = Regime(*(self.get64(vcpu, self.ids.sys[name])
                          for name in ("sctlr_el1", "tcr_el1", "ttbr0_el1", "ttbr1_el1")))
        mem = vcpu.vm.mem
        return walk(lambda gpa: int.from_bytes(mem.read(gpa, 8), "little"), regime, addr)

    def guest_debug(self, step: bool, sw: bool, hw: list[HwPoint]) -> object:
        """The kvm_guest_debug for these points; ValueError for one the
        debug registers cannot hold."""
        lib = self.lib
        breaks = [p for p in hw if p.kind == Watch.EXECUTE]
        watches = [p for p in hw if p.kind != Watch.EXECUTE]
        if len(breaks) > self.breakpoints or len(watches) > self.watchpoints:
            raise ValueError("no debug register left")
        dbg = self.ffi.new("struct kvm_guest_debug *")
        if step or sw or hw:  # else 0: the guest's own debugging is back
            dbg.control = lib.KVM_GUESTDBG_ENABLE | \
                (lib.KVM_GUESTDBG_SINGLESTEP if step else 0) | \
                (lib.KVM_GUESTDBG_USE_SW_BP if sw else 0) | \
                (lib.KVM_GUESTDBG_USE_HW if hw else 0)
        for i, p in enumerate(breaks):
            dbg.arch.dbg_bcr[i], dbg.arch.dbg_bvr[i] = bcr_bvr(p)
        for i, p in enumerate(watches):
            dbg.arch.dbg_wcr[i], dbg.arch.dbg_wvr[i] = wcr_wvr(p)
        return dbg

    def set_debug(self, vcpu: object, step: bool, sw: bool, hw: list[HwPoint]) -> None:
        set_guest_debug(vcpu, self.guest_debug(step, sw, hw))

    def stop_reason(self, vcpu: object, hw: list[HwPoint]) -> Stop:
        d = vcpu.run.debug.arch
        ec = d.hsr >> ESR_EC_SHIFT
        if ec == EC_BRK:
            return Stop("swbreak", self.get64(vcpu, self.ids.registers[PC]))
        if ec == EC_BREAKPOINT:
            return Stop("hwbreak")
        if ec == EC_WATCHPOINT:
            return watch_stop(hw, d.far)
        return Stop()  # EC_STEP

    def pass_trap(self, vcpu: object) -> None:
        """Give the guest the BRK it hit, one it planted itself (Linux's
        BUG() and friends): KVM cannot inject it, so enter its EL1
        synchronous vector as the CPU would, the BRK its return address."""
        ids = self.ids
        pc = self.get64(vcpu, ids.registers[PC])
        pstate = self.get64(vcpu, ids.registers[CPSR])
        vbar = self.get64(vcpu, ids.sys["vbar_el1"])
        self.put64(vcpu, ids.sys["esr_el1"], vcpu.run.debug.arch.hsr)
        self.put64(vcpu, ids.elr_el1, pc)
        self.put64(vcpu, ids.spsr_el1, pstate)
        self.put64(vcpu, ids.registers[CPSR], PSTATE_EL1H | PSTATE_DAIF)
        offset = VECTOR_OFFSET.get(pstate & PSTATE_MODE, VECTOR_LOWER_EL)
        self.put64(vcpu, ids.registers[PC], vbar + offset)

    def failed_trap(self, vcpu: object) -> int | None:
        return None  # a BRK always ends in a debug exit


def watch_stop(hw: list[HwPoint], far: int) -> Stop:
    """The watchpoint whose doubleword the access touched (FAR may name any
    byte of the access), or the first."""
    watches = [p for p in hw if p.kind != Watch.EXECUTE]
    hit = next((p for p in watches if p.addr & ~7 == far & ~7), watches[0] if watches else None)
    if hit is None:
        return Stop()
    return Stop(WATCH_NAMES[hit.kind], hit.addr)
