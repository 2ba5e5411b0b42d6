"""virtio-net through the mock driver: frames to a fake back end and
back, hostile chains, the link going down."""

import os

import pytest

from include.uapi import lib
from net.backend import MAX_FRAME, LinkDown
from virtio.mock import F_NEXT, F_WRITE, Driver, mock_memory
from virtio.net import HDR, HDR_MRG, PENDING_FRAMES, RX, TX, Net, parse_mac

MAC = parse_mac("02:15:15:15:15:15")
HDR_NONE = HDR_MRG.pack(0, 0, 0, 0, 0, 0, 0)


class FakeBackend:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []
        self.dead: str | None = None
        self.closed = 0

    def fileno(self) -> int:
        return -1

    def send(self, frame: bytes) -> None:
        if self.dead:
            raise LinkDown(self.dead)
        self.sent.append(frame)

    def recv(self) -> list[bytes]:
        if self.dead:
            raise LinkDown(self.dead)
        out, self.inbox = self.inbox, []
        return out

    def close(self) -> None:
        self.closed += 1


def net_for(backend, features=None):
    dev = Net(mock_memory(), backend, MAC)
    drv = Driver(dev)
    rx, tx = drv.start(features)
    return dev, drv, rx, tx


def deliver(dev, backend, *frames):
    backend.inbox += frames
    dev.receive()


def test_config_has_the_mac_and_link_up():
    dev, _, _, _ = net_for(FakeBackend())
    assert bytes(dev.config[:6]) == MAC
    assert dev.read_config(6, 2) == lib.VIRTIO_NET_S_LINK_UP
    assert dev.driver_features >> lib.VIRTIO_NET_F_MRG_RXBUF & 1


@pytest.mark.parametrize("indirect", [False, True])
def test_transmit_reaches_the_back_end(indirect):
    be = FakeBackend()
    dev, _, _, tx = net_for(be)
    frame = os.urandom(1514)
    tx.add([HDR_NONE, frame[:100], frame[100:]], [], indirect=indirect)
    tx.add([HDR_NONE + frame], [])
    tx.kick()
    assert be.sent == [frame, frame]
    assert [w for _, w, _ in tx.collect()] == [0, 0]


def test_receive_spans_mergeable_buffers():
    be = FakeBackend()
    dev, drv, rx, _ = net_for(be)
    for _ in range(4):
        rx.add([], [500, 500])   # two descriptors a chain
    frame = os.urandom(2500)
    deliver(dev, be, frame)
    used = rx.collect()
    assert len(used) == 3 and drv.transport.queue_irqs[RX] == 1
    data = b"".join(d[:w] for _, w, d in used)
    assert HDR_MRG.unpack_from(data)[-1] == 3     # num_buffers
    assert data[HDR_MRG.size:] == frame
    assert [w for _, w, _ in used] == [1000, 1000, 2500 + HDR_MRG.size - 2000]


def test_receive_waits_for_enough_buffers():
    be = FakeBackend()
    dev, _, rx, _ = net_for(be)
    frame = os.urandom(3000)
    rx.add([], [1000])
    deliver(dev, be, frame)
    assert rx.collect() == [] and len(dev.pending) == 1   # the buffer went back unused
    rx.add([], [4000])
    rx.kick()
    used = rx.collect()
    assert len(used) == 2 and not dev.pending
    assert b"".join(d[:w] for _, w, d in used)[HDR_MRG.size:] == frame


def test_receive_without_mergeable_drops_what_one_buffer_cannot_hold():
    be = FakeBackend()
    no_mrg = Net(mock_memory(), be, MAC).offered() & ~(1 << lib.VIRTIO_NET_F_MRG_RXBUF)
    dev, _, rx, _ = net_for(be, no_mrg)
    rx.add([], [1600])
    small = os.urandom(1500)
    deliver(dev, be, os.urandom(9000), small)
    ((_, written, data),) = rx.collect()
    assert dev.dropped == 1 and written == HDR_MRG.size + len(small)
    assert HDR_MRG.unpack_from(data)[-1] == 1 and data[HDR_MRG.size:written] == small


def test_legacy_header_without_mergeable_is_ten_bytes():
    be = FakeBackend()
    dev = Net(mock_memory(), be, MAC)
    dev.modern = False
    rx, tx = Driver(dev).start(dev.offered() & ~(1 << lib.VIRTIO_NET_F_MRG_RXBUF))
    rx.add([], [1600])
    deliver(dev, be, b"x" * 60)
    ((_, written, _),) = rx.collect()
    assert written == HDR.size + 60
    tx.add([HDR.pack(0, 0, 0, 0, 0, 0) + b"y" * 60], [])
    tx.kick()
    assert be.sent == [b"y" * 60]


def test_pending_frames_are_bounded():
    be = FakeBackend()
    dev, _, _, _ = net_for(be)
    deliver(dev, be, *[b"z" * 60] * (PENDING_FRAMES + 10))
    assert len(dev.pending) == PENDING_FRAMES and dev.dropped == 10


@pytest.mark.parametrize("out,ins", [
    ([HDR_NONE, b"a" * (MAX_FRAME + 1)], []),             # oversized
    ([HDR_NONE[:5]], []),                                 # no room for the header
    ([HDR_NONE], []),                                     # a header and no frame
    ([HDR_NONE + b"a" * 60], [64]),                       # a device-writable part
    ([], [1600]),                                         # write-only
    ([HDR_MRG.pack(lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 0) + b"a" * 60], []),
    ([HDR_MRG.pack(0, lib.VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 0, 0, 0) + b"a" * 60], []),
])
def test_bad_transmits_are_dropped(out, ins):
    be = FakeBackend()
    dev, _, _, tx = net_for(be)
    tx.add(out, ins)
    tx.add([HDR_NONE + b"ok" * 30], [])
    tx.kick()
    assert be.sent == [b"ok" * 30] and dev.dropped == 1 and not dev.broken
    assert len(tx.collect()) == 2


def test_huge_transmit_descriptor_is_read_no_further_than_a_frame():
    be = FakeBackend()
    dev, _, _, tx = net_for(be)
    # 15 MiB of descriptors pointing at the same RAM: dropped, not copied.
    head = tx.free.pop()
    tx.write_desc(head, 0, 15 << 20, 0, 0)
    tx.publish(head)
    tx.kick()
    assert be.sent == [] and dev.dropped == 1 and not dev.broken


def test_read_only_receive_buffer_stops_the_device(capsys):
    be = FakeBackend()
    dev, _, rx, _ = net_for(be)
    rx.add([b"r" * 1600], [])
    deliver(dev, be, b"f" * 60)
    assert dev.broken and "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("queue", [RX, TX])
def test_looping_chain_stops_the_device(queue, capsys):
    be = FakeBackend()
    dev, drv, *_ = net_for(be)
    q = drv.queues[queue]
    a, b = q.free.pop(), q.free.pop()
    flags = F_NEXT | (F_WRITE if queue == RX else 0)
    q.write_desc(a, drv.alloc(1600), 1600, flags, b)
    q.write_desc(b, drv.alloc(1600), 1600, flags, a)
    q.publish(a)
    if queue == RX:
        deliver(dev, be, b"f" * 60)
    else:
        q.kick()
    assert dev.broken and "loop" in capsys.readouterr().err
    assert be.sent == []


def test_back_end_death_takes_the_link_down_once(capsys):
    be = FakeBackend()
    dev, drv, rx, tx = net_for(be)
    be.dead = "passt exited with status 1"
    dev.receive()
    dev.receive()
    tx.add([HDR_NONE + b"late" * 20], [])
    tx.kick()
    err = capsys.readouterr().err
    assert err.count("passt exited with status 1; the guest's link is down") == 1
    assert not dev.read_config(6, 2) & lib.VIRTIO_NET_S_LINK_UP
    assert drv.transport.config_irqs == 1 and be.closed == 1 and not dev.broken
    assert len(tx.collect()) == 1 and be.sent == []
