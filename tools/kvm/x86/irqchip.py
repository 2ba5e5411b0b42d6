"""A readable state of the interrupt path a PC guest depends on: the
8259 PICs, the PIT's timer channel and a vCPU's local APIC LVT entries.
For 'lkvm debug --dump' and fatal-exit dumps: a guest that waits for a
tick that never comes shows here why."""

from include.uapi import ffi, lib
from kvm.ioctl import ioctl
from x86.cpu import APIC_LVT0, APIC_LVT1

# More local APIC register offsets (Intel SDM vol. 3, table 11-1).
APIC_TPR, APIC_ISR0, APIC_IRR0, APIC_LVTT = 0x80, 0x100, 0x200, 0x320
PIC_CHIPS = (("master", lib.KVM_IRQCHIP_PIC_MASTER), ("slave", lib.KVM_IRQCHIP_PIC_SLAVE))


def pic_lines(vm: object) -> list[str]:
    out = []
    for name, chip_id in PIC_CHIPS:
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl(vm.fd, lib.KVM_GET_IRQCHIP, chip)
        p = chip.chip.pic
        out.append(f" pic {name:<6}  irr {p.irr:02x}  imr {p.imr:02x}  isr {p.isr:02x}  "
                   f"base {p.irq_base:02x}  auto_eoi {p.auto_eoi}  elcr {p.elcr:02x}")
    return out


def pit_line(vm: object) -> str:
    pit = ffi.new("struct kvm_pit_state2 *")
    ioctl(vm.fd, lib.KVM_GET_PIT2, pit)
    c = pit.channels[0]
    return f" pit ch0     mode {c.mode}  count {c.count}  gate {c.gate}"


def lapic_line(vcpu: object) -> str:
    lapic = vcpu.get(lib.KVM_GET_LAPIC, "struct kvm_lapic_state")
    regs = ffi.cast("uint32_t *", lapic.regs)

    def reg(offset: int) -> int:
        return regs[offset // 4]

    isr = "".join(f"{reg(APIC_ISR0 + 16 * i):08x}" for i in reversed(range(8)))
    irr = "".join(f"{reg(APIC_IRR0 + 16 * i):08x}" for i in reversed(range(8)))
    return (f" lapic       tpr {reg(APIC_TPR):02x}  lvtt {reg(APIC_LVTT):08x}  "
            f"lvt0 {reg(APIC_LVT0):08x}  lvt1 {reg(APIC_LVT1):08x}\n"
            f"             isr {isr.lstrip('0') or '0'}  irr {irr.lstrip('0') or '0'}")


def dump(vcpu: object) -> str:
    lines = ["", " Interrupts:", " -----------", lapic_line(vcpu)]
    if vcpu.id == 0:  # the chips are the VM's; show them once
        lines += [*pic_lines(vcpu.vm), pit_line(vcpu.vm)]
    return "\n".join(lines)
