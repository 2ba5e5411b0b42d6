"""The ACPI PM1a event and control blocks (ACPI 6.4, 4.8.3): enough for a
guest's poweroff.  Writing SLP_EN with the sleep type of _S5 (soft off)
ends the VM with status 0."""

from collections.abc import Callable

# Offsets in the block (event status/enable, then control) and PM1 control bits.
PM1_CNT = 4
SCI_EN = 1 << 0
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
SLP_EN = 1 << 13


class AcpiPm:
    def __init__(self, s5_slp_typ: int, on_poweroff: Callable[[], None]) -> None:
        self.s5 = s5_slp_typ
        self.on_poweroff = on_poweroff

    def read(self, offset: int, size: int) -> int:
        # Always in ACPI mode (the FADT has no SMI command port).
        return SCI_EN if offset == PM1_CNT else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == PM1_CNT and value & SLP_EN and \
                (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == self.s5:
            self.on_poweroff()
