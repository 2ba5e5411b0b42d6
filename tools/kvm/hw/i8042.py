"""The i8042 keyboard controller: enough for Linux to probe it, and the
reset line, which is how a guest booted with reboot=k ends lkvm.

Command and status values are the controller's (its datasheet).
"""

from collections import deque
from collections.abc import Callable

DATA, COMMAND = 0x0, 0x4  # offsets from port 0x60

STATUS_OBF, STATUS_SYS, STATUS_CMD = 0x01, 0x04, 0x08
CTR_KBDINT = 0x01

CMD_READ_CTR, CMD_WRITE_CTR = 0x20, 0x60
CMD_SELF_TEST, CMD_KBD_TEST, CMD_AUX_TEST = 0xAA, 0xAB, 0xA9
CMD_RESET = 0xFE

KBD_ACK, KBD_RESET, KBD_GET_ID = 0xFA, 0xFF, 0xF2

# Controller commands that answer with one byte.
ANSWERS = {CMD_SELF_TEST: 0x55, CMD_KBD_TEST: 0x00, CMD_AUX_TEST: 0x00}
# Keyboard commands and what the keyboard sends back.
KBD_REPLIES = {KBD_RESET: (KBD_ACK, 0xAA), KBD_GET_ID: (KBD_ACK, 0xAB, 0x83)}
# Bytes waiting for the guest to read port 0x60.  A keyboard buffers about
# 16 and drops what comes after (an overrun); a guest that writes without
# reading must not make us queue more.
OUT_MAX = 16


class I8042:
    def __init__(self, reset: Callable[[], None], set_irq: Callable[[int], None]) -> None:
        self.reset = reset
        self.set_irq = set_irq
        self.ctr = CTR_KBDINT
        self.out: deque[int] = deque()
        self.pending_write: int | None = None  # a command waiting for its data byte
        self.last_status_cmd = False

    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND:
            return (STATUS_OBF if self.out else 0) | STATUS_SYS | \
                (STATUS_CMD if self.last_status_cmd else 0)
        value = self.out.popleft() if self.out else 0
        self._irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND:
            self._command(value)
        elif self.pending_write == CMD_WRITE_CTR:
            self.ctr = value
            self.pending_write = None
        else:
            self._queue(*KBD_REPLIES.get(value, (KBD_ACK,)))
        self.last_status_cmd = offset == COMMAND
        self._irq()

    def _command(self, cmd: int) -> None:
        if cmd == CMD_RESET:
            self.reset()
        elif cmd == CMD_READ_CTR:
            self._queue(self.ctr)
        elif cmd == CMD_WRITE_CTR:
            self.pending_write = cmd
        elif cmd in ANSWERS:
            self._queue(ANSWERS[cmd])

    def _queue(self, *replies: int) -> None:
        self.out.extend(replies[:OUT_MAX - len(self.out)])

    def _irq(self) -> None:
        self.set_irq(int(bool(self.out) and bool(self.ctr & CTR_KBDINT)))
