"""x86 vCPU state: CPUID, the local APIC's wiring, reset, and dumps."""

from include.uapi import ffi, lib
from kvm.errors import GuestError
from kvm.ioctl import ioctl
from x86 import pagetable

# Local APIC register offsets and LVT fields, from the Intel SDM vol. 3
# (hardware, not kernel ABI: no uapi header carries them).
APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_EXTINT = 0x7 << 8
APIC_MODE_NMI = 0x4 << 8
APIC_LVT_MASKED = 1 << 16

# CPUID.1:ECX[31], which CPUs leave clear for hypervisors to set; KVM's
# supported list does not set it (the VMM's job), and without it Linux
# never looks at KVM's leaves at 0x40000000: no kvmclock, so it times its
# early boot with the PIT and jiffies.
CPUID_1_ECX_HYPERVISOR = 1 << 31


def supported_cpuid(kvm: object, max_entries: int = 256) -> object:
    """KVM_GET_SUPPORTED_CPUID as a `struct kvm_cpuid2 *`."""
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
    ioctl(kvm.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
    return cpuid


def set_cpuid(vcpu: object, supported: object) -> None:
    """Give the vCPU what KVM supports, with its own APIC ID and the CPU
    count where the guest looks for them (leaf 1 EBX[31:24] and [23:16],
    leaf 0xB EDX), and the hypervisor bit."""
    n = supported.nent
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
    ffi.memmove(cpuid.entries, supported.entries, n * ffi.sizeof("struct kvm_cpuid_entry2"))
    for e in cpuid.entries[0:n]:
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (vcpu.id << 24) | (len(vcpu.vm.vcpus) << 16)
            e.ecx |= CPUID_1_ECX_HYPERVISOR
        elif e.function == 0xB:
            e.edx = vcpu.id
    vcpu.set(lib.KVM_SET_CPUID2, cpuid)


def wire_lapic(vcpu: object) -> None:
    """LINT0 takes the 8259's interrupts (virtual wire) and LINT1 is NMI, as
    a PC's BIOS leaves them; a kernel booted with noapic relies on it."""
    lapic = vcpu.get(lib.KVM_GET_LAPIC, "struct kvm_lapic_state")
    regs = ffi.cast("uint32_t *", lapic.regs)
    regs[APIC_LVT0 // 4] = (regs[APIC_LVT0 // 4] & ~(0x700 | APIC_LVT_MASKED)) | APIC_MODE_EXTINT
    regs[APIC_LVT1 // 4] = (regs[APIC_LVT1 // 4] & ~(0x700 | APIC_LVT_MASKED)) | APIC_MODE_NMI
    vcpu.set(lib.KVM_SET_LAPIC, lapic)


def real_mode(vcpu: object, selector: int, ip: int, sp: int) -> None:
    """Start in real mode at selector:ip with every data segment alike."""
    sregs = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(sregs, name)
        seg.selector = selector
        seg.base = selector << 4
    vcpu.set(lib.KVM_SET_SREGS, sregs)
    regs = ffi.new("struct kvm_regs *", {"rip": ip, "rsp": sp, "rbp": sp,
                                          "rflags": lib.X86_EFLAGS_FIXED})
    vcpu.set(lib.KVM_SET_REGS, regs)


# An AP that the boot CPU has not started yet.
NOT_STARTED = (lib.KVM_MP_STATE_UNINITIALIZED, lib.KVM_MP_STATE_INIT_RECEIVED)


def guest_halted(vm: object) -> bool:
    """Every started CPU sits in HLT with interrupts off: nothing but an
    NMI, which nobody sends, can wake them.  Called with the vCPUs parked."""
    started = False
    for vcpu in vm.vcpus:
        state = vcpu.get(lib.KVM_GET_MP_STATE, "struct kvm_mp_state").mp_state
        if state in NOT_STARTED:
            continue
        regs = vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs")
        if state != lib.KVM_MP_STATE_HALTED or regs.rflags & lib.X86_EFLAGS_IF:
            return False
        started = True
    return started


def translate(vcpu: object, linear: int) -> int | None:
    """Guest linear to physical address, walked by KVM."""
    tr = ffi.new("struct kvm_translation *", {"linear_address": linear})
    ioctl(vcpu.fd, lib.KVM_TRANSLATE, tr)
    return tr.physical_address if tr.valid else None


SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs", "tr", "ldt")


def dump(vcpu: object) -> str:
    """Registers, segments and the code at rip, the way kvmtool lays out
    its dump, so the two read alike."""
    r = vcpu.get(lib.KVM_GET_REGS, "struct kvm_regs")
    s = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
    out = ["", " Registers:", " ----------",
           f" rip: {r.rip:016x}   rsp: {r.rsp:016x} flags: {r.rflags:016x}",
           f" rax: {r.rax:016x}   rbx: {r.rbx:016x}   rcx: {r.rcx:016x}",
           f" rdx: {r.rdx:016x}   rsi: {r.rsi:016x}   rdi: {r.rdi:016x}",
           f" rbp: {r.rbp:016x}    r8: {r.r8:016x}    r9: {r.r9:016x}",
           f" r10: {r.r10:016x}   r11: {r.r11:016x}   r12: {r.r12:016x}",
           f" r13: {r.r13:016x}   r14: {r.r14:016x}   r15: {r.r15:016x}",
           f" cr0: {s.cr0:016x}   cr2: {s.cr2:016x}   cr3: {s.cr3:016x}",
           f" cr4: {s.cr4:016x}   cr8: {s.cr8:016x}  efer: {s.efer:016x}",
           "", " Segment registers:", " ------------------",
           " register  selector  base              limit     type  p dpl db s l g avl"]
    for name in SEGMENTS:
        g = getattr(s, name)
        out.append(f" {name:<9} {g.selector:04x}      {g.base:016x}  {g.limit:08x}  "
                   f"{g.type:02x}    {g.present} {g.dpl}   {g.db}  {g.s} {g.l} {g.g} {g.avl}")
    out.append(f" gdt                 {s.gdt.base:016x}  {s.gdt.limit:04x}")
    out.append(f" idt                 {s.idt.base:016x}  {s.idt.limit:04x}")
    out += ["", " Code:", " -----"]
    linear = r.rip + s.cs.base if not s.cs.l else r.rip
    phys = translate(vcpu, linear)
    try:
        code = vcpu.vm.mem.read(phys, 16) if phys is not None else None
    except GuestError:
        code = None
    where = f" rip: [<{r.rip:016x}>] linear {linear:#x}, physical "
    out.append(where + (f"{phys:#x}" if phys is not None else "unmapped"))
    out.append(" " + (code.hex(" ") if code else "(not in guest RAM)"))
    out += ["", " Page Tables:", " ------------"]
    stack = r.rsp + s.ss.base if not s.cs.l else r.rsp
    for name, addr in (("rip", linear), ("rsp", stack)):
        out.append(f" {name} linear {addr:#x}: " + describe_walk(
            pagetable.walk(vcpu.vm.mem, s.cr0, s.cr3, s.cr4, s.efer, addr)))
    return "\n".join(out)


def describe_translation(vcpu: object, addr: int) -> str:
    """A virtual address through the vCPU's page tables, walked as the
    dump and the gdb stub walk them."""
    s = vcpu.get(lib.KVM_GET_SREGS, "struct kvm_sregs")
    return f"vCPU {vcpu.id} linear {addr:#x}: " + describe_walk(
        pagetable.walk(vcpu.vm.mem, s.cr0, s.cr3, s.cr4, s.efer, addr))


def describe_walk(w: pagetable.Walk) -> str:
    steps = [f"{name} {entry:016x}" for name, entry in w.entries]
    end = f"physical {w.physical:#x}" if w.physical is not None else "unmapped"
    if w.problem:
        end += f" ({w.problem})"
    return "  ".join(steps + [end])


def inject_nmi(vcpu: object) -> None:
    """KVM_NMI: only while the vCPU is out of KVM_RUN (paused)."""
    ioctl(vcpu.fd, lib.KVM_NMI)
