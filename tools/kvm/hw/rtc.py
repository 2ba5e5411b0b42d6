"""The MC146818 real-time clock and CMOS memory, reading the host's time.

Register numbers are the chip's (its datasheet).  The clock reports UTC in
BCD with a 24-hour day, as PC firmware leaves it.
"""

import time

INDEX, DATA = 0, 1  # offsets from port 0x70
NMI_DISABLE = 0x80

SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
REG_B_24H = 0x02
REG_D_VRT = 0x80  # the battery is fine
REG_A_DEFAULT = 0x26  # 32.768 kHz base, 1024 Hz periodic rate
# tm_wday counts from Monday = 0; the RTC from Sunday = 1.


def bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


class Rtc:
    def __init__(self) -> None:
        self.index = 0
        self.cmos = bytearray(128)
        self.cmos[REG_A] = REG_A_DEFAULT
        self.cmos[REG_B] = REG_B_24H
        self.cmos[REG_D] = REG_D_VRT

    def read(self, offset: int, size: int) -> int:
        if offset == INDEX:
            return 0xFF  # the index port is write-only
        return self._clock().get(self.index, self.cmos[self.index])

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == INDEX:
            self.index = value & ~NMI_DISABLE & 0x7F
        elif self.index not in (REG_C, REG_D):
            self.cmos[self.index] = value & 0xFF

    @staticmethod
    def _clock() -> dict[int, int]:
        t = time.gmtime()
        return {SECONDS: bcd(t.tm_sec), MINUTES: bcd(t.tm_min), HOURS: bcd(t.tm_hour),
                WEEKDAY: bcd((t.tm_wday + 1) % 7 + 1), DAY: bcd(t.tm_mday),
                MONTH: bcd(t.tm_mon), YEAR: bcd(t.tm_year % 100),
                CENTURY: bcd(t.tm_year // 100)}
