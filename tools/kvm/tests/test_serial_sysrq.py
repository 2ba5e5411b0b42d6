"""Magic SysRq on the 8250: a break, then the key, as Linux's serial
driver wants to see them."""

from hw.serial8250 import IER_DLM, IER_RDI, LSR, LSR_BI, LSR_DR, RBR_THR_DLL, Serial8250


def test_sysrq_is_a_break_then_the_key():
    levels = []
    uart = Serial8250(levels.append)
    uart.write(IER_DLM, 1, IER_RDI)
    uart.sysrq(b"t")
    assert levels[-1] == 1  # data ready interrupts
    assert uart.read(LSR, 1) & (LSR_BI | LSR_DR) == LSR_BI | LSR_DR
    assert uart.read(RBR_THR_DLL, 1) == 0  # a break reads as NUL
    assert uart.read(LSR, 1) & (LSR_BI | LSR_DR) == LSR_DR
    assert uart.read(RBR_THR_DLL, 1) == ord("t")
    assert uart.read(LSR, 1) & (LSR_BI | LSR_DR) == 0
    assert levels[-1] == 0
