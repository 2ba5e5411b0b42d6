"""The virtqueue's barriers sit at every crossing of the rings, in the
order virtio 1.x §2.7.13 asks of a device, and the fences they call are
what they claim to be in the compiled bindings."""

import glob
import os
import platform
import signal
import subprocess

import pytest

from include.uapi import lib
from kvm.memory import GuestMemory
from tests.helpers import KVMDIR
from virtio import queue
from virtio.mock import LOW_RAM, Driver, mock_memory
from virtio.queue import AVAIL_IDX, AVAIL_RING, USED_IDX, USED_RING, Virtqueue
from virtio.rng import Rng

EVENT_IDX = 1 << lib.VIRTIO_RING_F_EVENT_IDX


class Trace:
    """The ring accesses and barriers of one virtqueue, by name, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, vq: Virtqueue) -> None:
        self.events: list[str] = []
        self.vq = vq
        u16, put16, elem = Virtqueue._u16, Virtqueue._put16, queue.USED_ELEM

        def read(view: memoryview, off: int) -> int:
            self.events.append("read " + self.name(view, off))
            return u16(view, off)

        def write(view: memoryview, off: int, value: int) -> None:
            self.events.append("write " + self.name(view, off))
            put16(view, off, value)

        class Elem:
            size = elem.size

            def pack_into(_, *args: object) -> None:
                self.events.append("write used elem")
                elem.pack_into(*args)

        monkeypatch.setattr(Virtqueue, "_u16", staticmethod(read))
        monkeypatch.setattr(Virtqueue, "_put16", staticmethod(write))
        monkeypatch.setattr(queue, "USED_ELEM", Elem())
        for fence in ("mb", "acquire", "release"):
            monkeypatch.setattr(queue, fence, lambda f=fence: self.events.append(f))

    def name(self, view: memoryview, off: int) -> str:
        ring_end = {"avail": AVAIL_RING, "used": USED_RING}
        for ring, v in (("avail", self.vq._avail), ("used", self.vq._used16)):
            if view is v:
                if off == ring_end[ring] + (2 if ring == "avail" else 8) * self.vq.size:
                    return f"{ring} event"
                return {AVAIL_IDX: f"{ring} idx", 0: f"{ring} flags"}.get(off, f"{ring} ring")
        raise AssertionError(f"a 16-bit access outside the rings at {off}")


@pytest.fixture
def rng():
    dev = Rng(mock_memory())
    yield dev
    dev.close()


def one_request(monkeypatch: pytest.MonkeyPatch, rng: Rng, features: int) -> list[str]:
    (q,) = Driver(rng).start(features)
    trace = Trace(monkeypatch, rng.queues[0])
    q.add([], [16])
    q.kick()
    assert [n for _, n, _ in q.collect()] == [16]
    return trace.events


def test_barriers_without_event_index(monkeypatch, rng):
    assert USED_IDX == AVAIL_IDX  # both rings' idx words sit at the same offset
    assert one_request(monkeypatch, rng, rng.offered() & ~EVENT_IDX) == [
        "read avail idx", "acquire", "read avail ring",      # pop: the entry after the index
        "write used elem", "release", "write used idx",     # push: the entry before the index
        "read avail idx",                                   # pop: empty now
        "mb", "read avail flags",                           # interrupt? after the index is out
    ]


def test_barriers_with_event_index(monkeypatch, rng):
    assert one_request(monkeypatch, rng, rng.offered() | EVENT_IDX) == [
        "read avail idx", "acquire", "read avail ring",
        "write used elem", "release", "write used idx",
        "read avail idx", "write used event", "mb", "read avail idx",  # kick me, then look again
        "mb", "read avail event",
    ]


def fence_code(symbol: str) -> list[str]:
    """The instructions of a fence in the compiled bindings."""
    (so,) = glob.glob(os.path.join(KVMDIR, "include", "_uapi*.so"))
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True,
                         text=True, check=True).stdout
    body = out.split(f"<_cffi_d_{symbol}>:\n", 1)[1].split("\n\n", 1)[0]
    code = [line.split("\t", 1)[1].split()[0] for line in body.splitlines() if "\t" in line]
    return code[:code.index("ret") + 1]  # not the padding after it


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 instructions")
def test_x86_fences():
    """x86 reorders a load before an earlier store, so the full fence is a
    locked instruction or mfence; acquire and release cost nothing."""
    assert fence_code("lkvm_mb")[0] in ("lock", "mfence")
    assert fence_code("lkvm_acquire") == ["ret"]
    assert fence_code("lkvm_release") == ["ret"]



def test_ring_words_are_read_whole(tmp_path):
    """The driver changes a ring word on another CPU while the device
    reads it: a read sees the old word or the new one, never half of
    each.  A forked process, running truly in parallel as a vCPU does,
    flips the used event across a byte carry (0x00ff, 0x0100) in shared
    guest RAM; a byte-wise read tears (0x0000, 0x01ff) within 200,000
    reads here."""
    mem = GuestMemory([(0, LOW_RAM)], hugetlbfs=str(tmp_path))  # a MAP_SHARED file
    dev = Rng(mem)
    (q,) = Driver(dev).start(dev.offered() | EVENT_IDX)
    vq = dev.queues[0]
    event = AVAIL_RING + 2 * vq.size
    words = mem.view(q.avail + event, 2).cast("H")
    words[0] = 0x00FF  # before the writer starts: no read sees the ring's first 0
    pid = os.fork()
    if pid == 0:
        while True:
            words[0] = 0x00FF
            words[0] = 0x0100
    try:
        seen = {vq._u16(vq._avail, event) for _ in range(200_000)}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        dev.close()
    assert seen <= {0x00FF, 0x0100}, sorted(hex(v) for v in seen)
