"""virtio-balloon driven by the mock driver as Linux drives it, and by
hostile drivers: inflating gives memory back to the host, PFNs outside
RAM are refused, statistics make the round trip to `lkvm stat`."""

import ctypes
import errno
import json
import threading
from types import SimpleNamespace

import pytest

from include.uapi import ffi, lib
from ipc.protocol import BALLOON, S32, STAT, IpcError
from ipc.server import IpcServer
from kvm.config import Config
from tests.fakevm import FakeVm, context
from tests.helpers import run_lkvm
from virtio import balloon as balloon_mod
from virtio import setup
from virtio.balloon import DEFLATE, INFLATE, PAGE, PFN, STATS, Balloon
from virtio.mmio import VirtioMmio
from virtio.mock import HIGH_RAM, HOLE, LOW_RAM, Driver, mock_memory
from virtio.pci import DEVICE
from x86.arch import X86

MIB = 1 << 20
PATTERN = b"\xa5" * PAGE
BALLOON_PAGES = 0x800  # pages from 8 MiB on: clear of the mock driver's rings and buffers


def resident(mem, gpa: int, pages: int) -> list[bool]:
    """mincore(2) of guest pages: which are in host memory."""
    r = mem.region(gpa, pages * PAGE)
    vec = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mincore(ctypes.c_void_p(r.host + gpa - r.gpa),
                        ctypes.c_size_t(pages * PAGE), vec) == 0
    return [bool(b & 1) for b in vec]


def stat_array(*pairs: tuple[int, int]) -> bytes:
    stats = ffi.new(f"struct virtio_balloon_stat[{len(pairs)}]")
    for s, (tag, val) in zip(stats, pairs, strict=True):
        s.tag, s.val = tag, val
    return bytes(ffi.buffer(stats))


def started(**kw):
    dev = Balloon(mock_memory())
    d = Driver(dev)
    return dev, d, d.start(**kw)


def pfn_request(q, pfns: list[int]) -> list:
    q.add([b"".join(PFN.pack(p & 0xFFFFFFFF) for p in pfns)], [])
    q.kick()
    return q.collect()


def config(dev) -> tuple[int, int]:
    return dev.read_config(0, 4), dev.read_config(4, 4)


def test_inflate_gives_pages_back_to_the_host():
    dev, d, (inflate, _, _) = started()
    low, high = BALLOON_PAGES, HOLE[1] // PAGE
    for pfn in (*range(low, low + 8), *range(high, high + 2)):
        dev.mem.write(pfn * PAGE, PATTERN)
    # Out of order, with a run crossing nothing: every page goes.
    (done,) = pfn_request(inflate, [low + 3, low + 1, low + 2, high, high + 1, low + 6])
    assert done[1] == 0 and not dev.broken
    assert resident(dev.mem, low * PAGE, 8) == [True, False, False, False,
                                                True, True, False, True]
    assert resident(dev.mem, high * PAGE, 2) == [False, False]
    assert dev.mem.read(low * PAGE, 8 * PAGE) == PATTERN + bytes(3 * PAGE) + PATTERN * 2 + \
        bytes(PAGE) + PATTERN
    assert d.transport.queue_irqs[INFLATE] == 1
    dev.close()


def test_pfns_outside_ram_are_refused_without_touching_memory():
    dev, d, (inflate, _, _) = started()
    dev.mem.view(BALLOON_PAGES * PAGE, LOW_RAM - BALLOON_PAGES * PAGE)[:] = \
        PATTERN * (LOW_RAM // PAGE - BALLOON_PAGES)
    dev.mem.view(HOLE[1], HIGH_RAM)[:] = PATTERN * (HIGH_RAM // PAGE)
    outside = [HOLE[0] // PAGE, HOLE[1] // PAGE - 1, (HOLE[1] + HIGH_RAM) // PAGE,
               0xFFFFFFFF, 2**31]
    (done,) = pfn_request(inflate, outside)
    assert done[1] == 0 and not dev.broken
    assert dev.mem.read(BALLOON_PAGES * PAGE, LOW_RAM - BALLOON_PAGES * PAGE) == \
        PATTERN * (LOW_RAM // PAGE - BALLOON_PAGES)
    assert dev.mem.read(HOLE[1], HIGH_RAM) == PATTERN * (HIGH_RAM // PAGE)
    # A run that reaches the end of low RAM stops there.
    last = LOW_RAM // PAGE - 1
    pfn_request(inflate, [last - 1, last, last + 1])
    assert dev.mem.read(HOLE[1], PAGE) == PATTERN
    assert dev.mem.read((last - 1) * PAGE, 2 * PAGE) == bytes(2 * PAGE)
    dev.close()


def test_odd_sized_and_oversized_pfn_buffers():
    dev, d, (inflate, _, _) = started()
    dev.mem.write(BALLOON_PAGES * PAGE, PATTERN)
    inflate.add([PFN.pack(BALLOON_PAGES) + b"\x01\x02"], [])  # a trailing half PFN
    inflate.kick()
    assert len(inflate.collect()) == 1 and not dev.broken
    assert dev.mem.read(BALLOON_PAGES * PAGE, PAGE) == bytes(PAGE)
    # A descriptor as long as low RAM: read as far as MAX_PFNS, no further.
    inflate.write_desc(0, 0, LOW_RAM, 0, 0)
    inflate.publish(0)
    inflate.kick()
    assert inflate.used_idx() == 2 and not dev.broken
    dev.close()


def test_deflate_hands_the_pages_back_untouched():
    dev, d, (inflate, deflate, _) = started()
    gpa = BALLOON_PAGES * PAGE
    dev.mem.write(gpa, PATTERN)
    pfn_request(inflate, [BALLOON_PAGES])
    ((_, written, _),) = pfn_request(deflate, [BALLOON_PAGES, 0xFFFFFFFF])
    assert written == 0 and not dev.broken
    assert dev.mem.read(gpa, PAGE) == bytes(PAGE)  # it faults back in, zeroed
    dev.mem.write(gpa, PATTERN)
    assert resident(dev.mem, gpa, 1) == [True]
    assert d.transport.queue_irqs[DEFLATE] == 1
    dev.close()


def test_target_moves_by_mib_within_ram_and_interrupts_a_running_driver():
    dev = Balloon(mock_memory())
    d = Driver(dev)
    handlers = dev.ipc_handlers("g")
    balloon = handlers[BALLOON][0]
    assert handlers[BALLOON][1] == S32.size and handlers[STAT][1] == 0
    balloon(S32.pack(8))
    assert config(dev) == (8 * MIB // PAGE, 0)
    assert d.transport.config_irqs == 0  # no driver yet: it reads the target at start
    d.start()
    balloon(S32.pack(4))
    assert config(dev) == (12 * MIB // PAGE, 0) and d.transport.config_irqs == 1
    balloon(S32.pack(2**31 - 1))
    assert config(dev)[0] == (LOW_RAM + HIGH_RAM) // PAGE
    balloon(S32.pack(-2**31))
    assert config(dev)[0] == 0
    assert d.transport.config_irqs == 3
    dev.close()


def test_driver_writes_actual_and_nothing_else():
    dev, d, _ = started()
    dev.ipc_handlers("g")[BALLOON][0](S32.pack(1))
    dev.write_config(4, 4, 256)
    dev.write_config(0, 4, 0xDEAD)    # the target is the host's
    dev.write_config(2, 4, 0xBEEF)    # straddles both
    dev.write_config(12, 4, 0x1234)   # poison_val: not offered
    assert config(dev) == (256, 256) and dev.read_config(12, 4) == 0
    dev.write_config(6, 2, 1)
    assert config(dev) == (256, 0x10100)
    dev.reset()
    assert config(dev) == (256, 0)    # the target outlives the driver
    dev.close()


class StatsDriver:
    """Linux's stats side: post a buffer at start, refill and re-post it
    (from another thread, as its workqueue does) whenever the device
    gives it back."""

    def __init__(self, answer: bool = True) -> None:
        self.dev, self.d, (_, _, self.q) = started()
        self.answer = answer
        self.returned = threading.Event()
        self.refills = 0
        self.d.transport.signal_queue = lambda index: self.returned.set()
        self.post(stat_array((lib.VIRTIO_BALLOON_S_MEMTOT, 64 * MIB)))
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.stop = False
        self.thread.start()

    def post(self, data: bytes) -> None:
        self.q.add([data], [])
        self.q.kick()

    def loop(self) -> None:
        while True:
            self.returned.wait()
            self.returned.clear()
            if self.stop:
                return
            done = self.q.collect()
            self.q.set_used_event(self.q.last_used)  # interrupts back on, as Linux does
            if done and self.answer:
                self.refills += 1
                self.post(stat_array((lib.VIRTIO_BALLOON_S_MEMFREE, self.refills * MIB),
                                     (lib.VIRTIO_BALLOON_S_MEMTOT, 64 * MIB)))

    def close(self) -> None:
        self.stop = True
        self.returned.set()
        self.thread.join()
        self.dev.close()


def parse(reply: bytes) -> list[tuple[int, int]]:
    return [(s.tag, s.val) for s in ffi.from_buffer("struct virtio_balloon_stat[]", reply)]


def test_stats_round_trip():
    drv = StatsDriver()
    stat = drv.dev.ipc_handlers("g")[STAT][0]
    for n in (1, 2):
        assert parse(stat(b"")) == [(lib.VIRTIO_BALLOON_S_MEMFREE, n * MIB),
                                    (lib.VIRTIO_BALLOON_S_MEMTOT, 64 * MIB)]
    assert drv.q.used_idx() == 2 and drv.dev.stats_head is not None
    drv.close()


def test_stats_time_out_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(balloon_mod, "STATS_TIMEOUT", 0.1)
    drv = StatsDriver(answer=False)  # takes the buffer back, never re-posts it
    stat = drv.dev.ipc_handlers("g")[STAT][0]
    for _ in range(2):  # the second time there is no buffer to give back at all
        with pytest.raises(IpcError) as e:
            stat(b"")
        assert e.value.errno == errno.ETIMEDOUT
        assert str(e.value) == ("guest 'g' sent no memory statistics within 0.1 s: "
                                "is its balloon driver loaded?")
    assert drv.q.used_idx() == 1
    drv.close()


def test_a_second_stats_buffer_returns_the_first_and_reset_forgets_it():
    dev, d, (_, _, q) = started()
    first = q.add([stat_array((1, 1))], [])
    q.add([stat_array((2, 2)) + b"\x07"], [])  # and a stray byte, dropped
    q.kick()
    assert [head for head, _, _ in q.collect()] == [first]
    assert parse(dev.stats) == [(2, 2)]
    dev.reset()
    assert dev.stats_head is None and dev.stats == b""
    dev.close()


def test_stat_through_the_ipc_socket(lkvm_home):
    """`lkvm stat` and `lkvm balloon` as a user runs them, against an IPC
    server carrying the device's handlers."""
    drv = StatsDriver()
    vm = SimpleNamespace(vcpus=[], paused=False, stopping=False)
    with IpcServer(vm, "mock", handlers=drv.dev.ipc_handlers("mock")):
        r = run_lkvm("stat", "-n", "mock", "--memory", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"name": "mock", "memory": {"free": MIB,
                                                                   "total": 64 * MIB}}
        assert run_lkvm("balloon", "-n", "mock", "--inflate", "3").returncode == 0
        assert config(drv.dev)[0] == 3 * MIB // PAGE
    drv.close()


@pytest.mark.parametrize("transport", sorted(setup.TRANSPORTS))
def test_balloon_option_on_every_transport(transport):
    """--balloon makes one, its target reaches the driver through the
    transport's config window, and the driver's `actual` comes back."""
    vm = FakeVm()
    ctx = context(vm)
    assert setup.balloon(ctx, Config(name="t", cpus=1, ram_mib=64), print) == []
    (dev,) = setup.balloon(ctx, Config(name="t", cpus=1, ram_mib=64, balloon=True), print)
    assert ctx.balloon is dev
    setup.TRANSPORTS[transport](dev, ctx)
    if isinstance(dev.transport, VirtioMmio):
        bus, window = vm.mmio, X86.VIRTIO_MMIO_START + lib.VIRTIO_MMIO_CONFIG
    elif dev.modern:
        bus, window = vm.mmio, dev.transport.bars[0].addr + DEVICE
    else:  # legacy I/O BAR, MSI-X off: config where the MSI-X vectors would be
        bus, window = vm.pio, dev.transport.bars[0].addr + lib.VIRTIO_MSI_CONFIG_VECTOR
    dev.ipc_handlers("g")[BALLOON][0](S32.pack(2))
    assert bus.read(window, 4) == 2 * MIB // PAGE
    bus.write(window + 4, 4, 77)
    assert config(dev) == (2 * MIB // PAGE, 77)
    assert dev.offered() >> lib.VIRTIO_BALLOON_F_STATS_VQ & 1
    assert not dev.offered() >> lib.VIRTIO_BALLOON_F_DEFLATE_ON_OOM & 1
    assert (INFLATE, DEFLATE, STATS) == (0, 1, 2) and len(dev.queues) == 3
    dev.close()
    vm.close()


def test_discard_failure_warns_once_and_carries_on(capsys, monkeypatch):
    dev, d, (inflate, _, _) = started()

    def refuse(gpa: int, length: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(dev.mem, "discard", refuse)
    pfn_request(inflate, [BALLOON_PAGES, BALLOON_PAGES + 2])
    pfn_request(inflate, [BALLOON_PAGES])
    assert not dev.broken and inflate.used_idx() == 2
    assert capsys.readouterr().err.count("cannot release guest memory") == 1
    dev.close()
