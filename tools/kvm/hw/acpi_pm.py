"""The ACPI PM1a event and control blocks (ACPI 6.4, 4.8.3): enough for a
guest's poweroff.  Writing SLP_EN with the sleep type of _S5 (soft off)
ends the VM with status 0."""

from collections.abc import Callable

# Layout of the block: PM1 status (write 1 to clear; nothing is ever
# pending here), PM1 enable, then PM1 control; and the control bits.
PM1_STS, PM1_EN, PM1_CNT, PM1_END = 0, 2, 4, 6
SCI_EN = 1 << 0
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
SLP_EN = 1 << 13


class AcpiPm:
    def __init__(self, s5_slp_typ: int, on_poweroff: Callable[[], None]) -> None:
        self.s5 = s5_slp_typ
        self.on_poweroff = on_poweroff
        # Always in ACPI mode: the FADT has no SMI command port.
        self.regs = bytearray(PM1_END)
        self.regs[PM1_CNT] = SCI_EN

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        for i, byte in enumerate(value.to_bytes(size, "little")):
            if PM1_EN <= offset + i < PM1_END:
                self.regs[offset + i] = byte
        self.regs[PM1_CNT] |= SCI_EN
        control = int.from_bytes(self.regs[PM1_CNT:PM1_END], "little")
        if control & SLP_EN:
            self.regs[PM1_CNT + 1] &= ~(SLP_EN >> 8) & 0xFF
            if (control >> SLP_TYP_SHIFT) & SLP_TYP_MASK == self.s5:
                self.on_poweroff()
