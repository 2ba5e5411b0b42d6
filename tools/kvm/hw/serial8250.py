"""The 8250/16550 UART, as much of it as a Linux console driver uses.

Transmission is instant, so the transmitter is always empty; received
bytes wait in a FIFO until the guest reads them.  Register numbers are the
chip's (its datasheet), not kernel ABI.
"""

import threading
from collections import deque
from collections.abc import Callable

RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

IER_RDI, IER_THRI = 0x01, 0x02
IIR_NO_INT, IIR_THRI, IIR_RDI, IIR_FIFO_ENABLED = 0x01, 0x02, 0x04, 0xC0
FCR_ENABLE_FIFO, FCR_CLEAR_RCVR = 0x01, 0x02
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x10, 0x20, 0x40
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

# In loopback the modem outputs come back as its inputs.
LOOPBACK_MSR = ((MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD))

RX_LIMIT = 4096  # bytes of input held for a guest that is not reading
# A break condition waits in the FIFO as a NUL flagged with it, as the chip
# reports one: LSR_BI set while that NUL is at the head.
BREAK = 0x100


class Serial8250:
    def __init__(self, set_irq: Callable[[int], None],
                 output: Callable[[bytes], None] | None = None) -> None:
        self.set_irq = set_irq
        self.output = output
        self.lock = threading.Lock()
        self.rx: deque[int] = deque()
        self.dll, self.dlm = 0x0C, 0  # 9600 baud, what firmware leaves
        self.ier = self.lcr = self.fcr = self.scr = 0
        self.mcr = MCR_OUT2
        self.thri_pending = False
        self.irq_level = 0

    # Guest side.
    def read(self, offset: int, size: int) -> int:
        with self.lock:
            value = self._read(offset)
            self._update_irq()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self._write(offset, value & 0xFF)
            self._update_irq()

    def _read(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            return self.dll if dlab else (self.rx.popleft() & 0xFF if self.rx else 0)
        if offset == IER_DLM:
            return self.dlm if dlab else self.ier
        if offset == IIR_FCR:
            iir = self._iir()
            if iir == IIR_THRI:
                self.thri_pending = False  # reading IIR acknowledges THRE
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE_FIFO else 0)
        if offset == LSR:
            head = self.rx[0] if self.rx else None
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0) | \
                (LSR_BI if head == BREAK else 0)
        if offset == MSR:
            return self._msr()
        return {LCR: self.lcr, MCR: self.mcr, SCR: self.scr}[offset]

    def _write(self, offset: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR_DLL and dlab:
            self.dll = value
        elif offset == RBR_THR_DLL:
            self._transmit(value)
        elif offset == IER_DLM and dlab:
            self.dlm = value
        elif offset == IER_DLM:
            if value & IER_THRI and not self.ier & IER_THRI:
                self.thri_pending = True  # an empty transmitter interrupts at once
            self.ier = value & 0x0F
        elif offset == IIR_FCR:
            self.fcr = value
            if value & FCR_CLEAR_RCVR:
                self.rx.clear()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive_locked(bytes([byte]))
        elif self.output is not None:
            self.output(bytes([byte]))
        self.thri_pending = True

    def _iir(self) -> int:
        if self.ier & IER_RDI and self.rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thri_pending:
            return IIR_THRI
        return IIR_NO_INT

    def _msr(self) -> int:
        if self.mcr & MCR_LOOP:
            return sum(m for bit, m in LOOPBACK_MSR if self.mcr & bit)
        return MSR_DCD | MSR_DSR | MSR_CTS

    def _update_irq(self) -> None:
        # OUT2 gates the interrupt line on PCs; Linux sets it when it
        # wants interrupts.
        level = int(self._iir() != IIR_NO_INT and bool(self.mcr & MCR_OUT2))
        if level != self.irq_level:
            self.irq_level = level
            self.set_irq(level)

    # Host side.
    def receive(self, data: bytes) -> None:
        """Bytes typed on the terminal, for the guest to read."""
        with self.lock:
            self._receive_locked(data)
            self._update_irq()

    def sysrq(self, key: bytes) -> None:
        """A break then `key`: what Linux's serial console takes as
        Magic SysRq, as `lkvm debug --sysrq` sends it."""
        with self.lock:
            if len(self.rx) + 2 <= RX_LIMIT:
                self.rx.extend((BREAK, key[0]))
            self._update_irq()

    def _receive_locked(self, data: bytes) -> None:
        room = RX_LIMIT - len(self.rx)
        self.rx.extend(data[:max(room, 0)])
