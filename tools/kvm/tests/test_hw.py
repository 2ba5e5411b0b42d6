"""The legacy devices and the buses, driven as a guest driver drives them."""

import ctypes
import mmap
import sys
import threading
import time

import pytest

from hw import serial8250 as uart
from hw.i8042 import I8042
from hw.rtc import Rtc
from kvm.bus import Bus
from kvm.errors import GuestError
from kvm.memory import GuestMemory


class Line:
    """An interrupt line that remembers its level."""

    def __init__(self) -> None:
        self.level = 0

    def __call__(self, level: int) -> None:
        self.level = level


def test_serial_passes_linux_loopback_probe():
    port = uart.Serial8250(Line())
    port.write(uart.MCR, 1, uart.MCR_LOOP | 0x0A)  # loop, RTS, OUT2
    assert port.read(uart.MSR, 1) & 0xF0 == 0x90  # CTS and DCD come back
    port.write(uart.RBR_THR_DLL, 1, 0x5A)
    assert port.read(uart.LSR, 1) & uart.LSR_DR
    assert port.read(uart.RBR_THR_DLL, 1) == 0x5A


def test_serial_output_and_divisor_latch():
    out = []
    port = uart.Serial8250(Line(), out.append)
    port.write(uart.LCR, 1, uart.LCR_DLAB)
    port.write(uart.RBR_THR_DLL, 1, 0x01)  # divisor, not data
    assert port.read(uart.RBR_THR_DLL, 1) == 0x01
    port.write(uart.LCR, 1, 0x03)
    port.write(uart.RBR_THR_DLL, 1, ord("x"))
    assert out == [b"x"]
    assert port.read(uart.LSR, 1) & (uart.LSR_THRE | uart.LSR_TEMT)


def test_serial_interrupts_need_out2_and_clear_on_read():
    line = Line()
    port = uart.Serial8250(line)
    port.write(uart.MCR, 1, 0)
    port.write(uart.IER_DLM, 1, uart.IER_RDI)
    port.receive(b"ab")
    assert line.level == 0  # OUT2 off: the line stays low
    port.write(uart.MCR, 1, uart.MCR_OUT2)
    assert line.level == 1
    assert port.read(uart.IIR_FCR, 1) & 0x0F == uart.IIR_RDI
    assert port.read(uart.RBR_THR_DLL, 1) == ord("a")
    assert port.read(uart.RBR_THR_DLL, 1) == ord("b")
    assert line.level == 0 and port.read(uart.IIR_FCR, 1) & 0x0F == uart.IIR_NO_INT


def test_serial_thre_interrupt_acknowledged_by_iir():
    line = Line()
    port = uart.Serial8250(line)
    port.write(uart.IER_DLM, 1, uart.IER_THRI)
    assert line.level == 1
    assert port.read(uart.IIR_FCR, 1) & 0x0F == uart.IIR_THRI
    assert line.level == 0


def test_serial_input_is_bounded():
    port = uart.Serial8250(Line())
    port.receive(b"x" * (uart.RX_LIMIT + 100))
    assert len(port.rx) == uart.RX_LIMIT


def test_i8042_probe_and_reset():
    resets = []
    kbc = I8042(lambda: resets.append(1), Line())
    kbc.write(4, 1, 0xAA)  # self test
    assert kbc.read(4, 1) & 0x01 and kbc.read(0, 1) == 0x55
    kbc.write(4, 1, 0x60)
    kbc.write(0, 1, 0x45)  # write the command byte
    kbc.write(4, 1, 0x20)
    assert kbc.read(0, 1) == 0x45
    assert kbc.read(4, 1) & 0x01 == 0  # nothing left to read
    kbc.write(4, 1, 0xFE)
    assert resets == [1]


def test_i8042_output_is_bounded():
    """A guest writing keyboard commands and never reading the replies."""
    kbc = I8042(lambda: None, Line())
    for _ in range(100_000):
        kbc.write(0, 1, 0xFF)  # keyboard reset: two replies each
    assert len(kbc.out) <= 16  # a keyboard's own buffer
    assert kbc.read(0, 1) == 0xFA and kbc.read(0, 1) == 0xAA  # the first, in order
    while kbc.read(4, 1) & 0x01:
        kbc.read(0, 1)
    kbc.write(4, 1, 0xAA)  # drained, it answers again
    assert kbc.read(0, 1) == 0x55


def test_rtc_reads_host_time_in_bcd():
    rtc = Rtc()

    def reg(n: int) -> int:
        rtc.write(0, 1, n | 0x80)  # the NMI-disable bit is not part of the index
        v = rtc.read(1, 1)
        return (v >> 4) * 10 + (v & 0xF)
    before = time.gmtime()
    year, month, day = reg(0x32) * 100 + reg(0x09), reg(0x08), reg(0x07)
    assert (year, month, day) in {(t.tm_year, t.tm_mon, t.tm_mday)
                                  for t in (before, time.gmtime())}
    rtc.write(0, 1, 0x0D)
    assert rtc.read(1, 1) & 0x80  # register D: the battery is good


def test_bus_dispatch_overlap_and_unclaimed():
    seen = []

    class Dev:
        def read(self, offset, size):
            return offset

        def write(self, offset, size, value):
            seen.append((offset, size, value))

    bus = Bus("ioport")
    bus.register(0x100, 8, Dev())
    with pytest.raises(ValueError):
        bus.register(0x104, 8, Dev())
    with pytest.raises(ValueError):
        bus.register(0xFC, 8, Dev())
    bus.register(0x108, 8, Dev())
    assert bus.read(0x103, 1) == 3
    bus.write(0x10A, 2, 0xBEEF)
    assert seen == [(2, 2, 0xBEEF)]
    assert bus.read(0x200, 1) == 0xFF and bus.read(0x200, 4) == 0xFFFFFFFF
    mover = Dev()
    bus.register(0x300, 8, mover)
    with pytest.raises(ValueError):
        bus.move(0x300, 0x10C)  # onto another: refused, and it stays
    assert bus.find(0x300) == (0x300, mover)
    bus.move(0x300, 0x400)
    assert bus.find(0x300) is None and bus.find(0x407) == (0x400, mover)
    with pytest.raises(ValueError):
        bus.unregister(0x300)


def test_bus_lookups_while_ranges_change():
    """vCPU threads look up while another registers and unregisters
    ranges below and between theirs, as a BAR move does: every lookup
    finds the range that is there or nothing, never another device and
    never an exception."""

    class Dev:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            pass

    bus = Bus("mmio")
    fixed = {0x10000 * (i + 1): Dev() for i in range(8)}
    for base, dev in fixed.items():
        bus.register(base, 0x1000, dev)
    churn, homes = Dev(), (0x100, 0x48000, 0x90000)   # below, between, above them
    done = threading.Event()
    problems: list[str] = []

    def look() -> None:
        while not done.is_set():
            try:
                for base, dev in fixed.items():
                    if bus.find(base + 0x800) != (base, dev):
                        problems.append(f"{base:#x}: {bus.find(base + 0x800)}")
                for home in homes:
                    if bus.find(home) not in (None, (home, churn)):
                        problems.append(f"{home:#x}: {bus.find(home)}")
            except Exception as e:  # what a vCPU thread would die of
                problems.append(repr(e))
            if problems:
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)     # switch threads as often as CPython will
    readers = [threading.Thread(target=look) for _ in range(2)]
    try:
        for t in readers:
            t.start()
        for n in range(20_000):
            if problems:
                break
            home = homes[n % len(homes)]
            bus.register(home, 0x1000, churn)
            bus.unregister(home)
    finally:
        done.set()
        for t in readers:
            t.join(timeout=30)
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in readers)
    assert problems == []


def test_memory_refuses_ranges_outside_ram():
    mem = GuestMemory([(0, 1 << 20), (4 << 20, 1 << 20)])
    mem.write(0x1000, b"abc")
    assert mem.read(0x1000, 3) == b"abc"
    assert mem.view((4 << 20) + 10, 4).nbytes == 4
    outside = [((1 << 20) - 2, 4),     # runs off the first region
               (2 << 20, 1),           # in the hole
               (-1, 2),                # before RAM
               (5 << 20, 1),           # just past the end
               (0, -1),                # a negative length
               (2**64 - 1, 2)]         # an address that wraps
    for gpa, n in outside:
        with pytest.raises(GuestError):
            mem.view(gpa, n)
        # Many at once, as a descriptor chain's: one bad range after
        # good ones in either region is refused all the same.
        with pytest.raises(GuestError):
            mem.views([(0x1000, 3), ((4 << 20) + 10, 4), (gpa, n)])
    got = mem.views([(0x1000, 3), ((4 << 20) + 10, 4), (0x1001, 0), ((1 << 20) - 1, 1)])
    assert [bytes(v) for v in got] == [b"abc", bytes(4), b"", b"\0"]
    del got
    mem.close()


def resident(mem: GuestMemory, gpa: int, pages: int) -> list[bool]:
    """mincore(2) of guest pages: which are in host memory."""
    libc = ctypes.CDLL(None, use_errno=True)
    vec = (ctypes.c_ubyte * pages)()
    r = mem.region(gpa, pages * mmap.PAGESIZE)
    addr = r.host + gpa - r.gpa
    assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(pages * mmap.PAGESIZE), vec) == 0
    return [bool(b & 1) for b in vec]


def test_memory_discard_gives_pages_back_and_refuses_outside_ram():
    page = mmap.PAGESIZE
    mem = GuestMemory([(0, 1 << 20), (4 << 20, 1 << 20)])
    mem.write(4 << 20, b"\xa5" * 4 * page)
    assert resident(mem, 4 << 20, 4) == [True] * 4
    mem.discard((4 << 20) + page, 2 * page)
    assert resident(mem, 4 << 20, 4) == [True, False, False, True]
    assert mem.read(4 << 20, 4 * page) == b"\xa5" * page + bytes(2 * page) + b"\xa5" * page
    mem.write(0, b"\x5a" * page)
    for gpa, n in [((1 << 20) - page, 2 * page),   # runs into the hole
                   (2 << 20, page),                # in the hole
                   (5 << 20, page),                # past the end
                   (2**64 - page, page),           # wraps
                   (0x800, page),                  # not page aligned
                   (0, page + 1)]:                 # not whole pages
        with pytest.raises(GuestError):
            mem.discard(gpa, n)
    assert mem.read(0, page) == b"\x5a" * page and mem.read((1 << 20) - 1, 1) == b"\0"
    mem.close()
