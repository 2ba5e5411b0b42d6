"""virtio-net through the mock driver: frames to a fake back end and
back, hostile chains, the link going down; and, with Debian's passt,
ARP, a DHCP lease and a TCP connection to the host's loopback, from
frames built here by hand."""

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from include.uapi import lib
from kvm.errors import LkvmError
from kvm.iothread import IoThread
from net import stream
from net.backend import MAX_FRAME, LinkDown
from net.defaults import GUEST_IP, GUEST_MAC, HOST_IP, HOST_MAC
from net.mac import parse_mac
from net.passt import Passt
from tests.helpers import KVMDIR
from virtio.mock import F_NEXT, F_WRITE, Driver, mock_memory
from virtio.net import HDR, HDR_MRG, PENDING_FRAMES, RX, TX, Net

MAC = parse_mac(GUEST_MAC)
HDR_NONE = HDR_MRG.pack(0, 0, 0, 0, 0, 0, 0)
WAIT = 5.0  # seconds passt gets to answer


class FakeBackend:
    offloads = 0

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

    def set_offloads(self, offloads: int) -> None:
        self.guest_offloads = offloads

    def enable(self, on: bool) -> None:
        self.enabled = on

    def close(self) -> None:
        self.closed += 1


def net_for(backend, features=None):
    dev = Net(mock_memory(), [backend], MAC)
    drv = Driver(dev)
    rx, tx, _ = drv.start(features)
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
    assert rx.collect() == [] and len(dev.pending[0]) == 1   # the buffer went back unused
    rx.add([], [4000])
    rx.kick()
    used = rx.collect()
    assert len(used) == 2 and not dev.pending[0]
    assert b"".join(d[:w] for _, w, d in used)[HDR_MRG.size:] == frame


def test_receive_without_mergeable_drops_what_one_buffer_cannot_hold():
    be = FakeBackend()
    no_mrg = Net(mock_memory(), [be], MAC).offered() & ~(1 << lib.VIRTIO_NET_F_MRG_RXBUF)
    dev, _, rx, _ = net_for(be, no_mrg)
    rx.add([], [1600])
    small = os.urandom(1500)
    deliver(dev, be, os.urandom(9000), small)
    ((_, written, data),) = rx.collect()
    assert dev.dropped == 1 and written == HDR_MRG.size + len(small)
    assert HDR_MRG.unpack_from(data)[-1] == 1 and data[HDR_MRG.size:written] == small


def test_legacy_header_without_mergeable_is_ten_bytes():
    be = FakeBackend()
    dev = Net(mock_memory(), [be], MAC)
    dev.modern = False
    rx, tx, _ = Driver(dev).start(dev.offered() & ~(1 << lib.VIRTIO_NET_F_MRG_RXBUF))
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
    assert len(dev.pending[0]) == PENDING_FRAMES and dev.dropped == 10


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


# QEMU's stream protocol.
@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    be = stream.StreamBackend(ours)
    yield be, theirs
    be.close()
    theirs.close()


def test_stream_reassembles_frames_across_reads(pair):
    be, peer = pair
    one, two = os.urandom(1514), os.urandom(60)
    wire = struct.pack(">I", len(one)) + one + struct.pack(">I", len(two)) + two
    peer.sendall(wire[:3])
    assert be.recv() == []
    peer.sendall(wire[3:1000])
    assert be.recv() == []
    peer.sendall(wire[1000:])
    assert be.recv() == [one, two] and not be.inbuf
    be.send(two)
    assert peer.recv(100) == struct.pack(">I", len(two)) + two


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFFFFFF])
def test_stream_bad_length_ends_the_link(pair, length):
    be, peer = pair
    peer.sendall(struct.pack(">I", length) + bytes(64))
    with pytest.raises(LinkDown, match=f"a frame of {length} bytes"):
        be.recv()


def test_stream_peer_closing_ends_the_link(pair):
    be, peer = pair
    peer.close()
    with pytest.raises(LinkDown, match="closed the connection"):
        be.recv()


def test_stream_peer_that_takes_nothing_ends_the_link(monkeypatch):
    monkeypatch.setattr(stream, "SEND_TIMEOUT", 1)
    ours, peer = socket.socketpair()    # the peer never reads
    be = stream.StreamBackend(ours)
    try:
        with pytest.raises(LinkDown, match="sending a frame failed"):
            for _ in range(1000):       # far more than the socket buffers hold
                be.send(bytes(MAX_FRAME))
    finally:
        be.close()
        peer.close()


@pytest.mark.parametrize("text", ["02:15:15:15:15", "02:15:15:15:15:1g", " 2:15:15:15:15:15",
                                  "02-15-15-15-15-15", "+2:15:15:15:15:15"])
def test_bad_mac_is_refused(text):
    with pytest.raises(ValueError):
        parse_mac(text)


# With the real passt.
needs_passt = pytest.mark.skipif(not any(
    os.access(os.path.join(d, "passt"), os.X_OK) for d in os.environ["PATH"].split(":")),
    reason="passt is not installed (make installs it)")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ether(dst: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + MAC + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    return ipv4(src, dst, socket.IPPROTO_UDP,
                struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    pseudo = socket.inet_aton(GUEST_IP) + socket.inet_aton(HOST_IP) + \
        struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    seg = seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]
    return ether(GATEWAY_MAC, 0x0800, ipv4(GUEST_IP, HOST_IP, socket.IPPROTO_TCP, seg))


GATEWAY_MAC = parse_mac(HOST_MAC)
SYN, ACK, PSH = 0x02, 0x10, 0x08


class Guest:
    """A device on passt with a driver that keeps receive buffers posted."""

    def __init__(self) -> None:
        self.backend = Passt()
        self.dev = Net(mock_memory(), [self.backend], MAC)
        self.rx, self.tx, _ = Driver(self.dev).start()
        for _ in range(64):
            self.rx.add([], [4096])

    def send(self, frame: bytes) -> None:
        self.tx.add([HDR_NONE + frame], [])
        self.tx.kick()
        assert self.tx.collect() and self.backend.proc.poll() is None

    def wait(self, match):
        """Received frames until `match` returns something for one; that."""
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.backend.fileno()], [], [], left)
            self.dev.receive()
            for _, written, data in self.rx.collect():
                self.rx.add([], [4096])
                self.rx.kick()
                if (found := match(data[HDR_MRG.size:written])) is not None:
                    return found
        pytest.fail("passt did not answer")

    def close(self) -> None:
        self.dev.close()


@pytest.fixture
def guest():
    g = Guest()
    yield g
    g.close()
    assert g.backend.proc.poll() is not None


def arp_reply(frame: bytes) -> bytes | None:
    if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\0\x02":
        return frame[22:32]   # the sender's MAC and IP
    return None


@needs_passt
def test_passt_answers_arp_for_the_host(guest):
    request = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + MAC + socket.inet_aton(GUEST_IP) + \
        bytes(6) + socket.inet_aton(HOST_IP)
    guest.send(ether(b"\xff" * 6, 0x0806, request))
    assert guest.wait(arp_reply) == GATEWAY_MAC + socket.inet_aton(HOST_IP)


@needs_passt
def test_io_thread_serves_the_back_end_and_the_link_going_down(guest, capsys):
    rx_irq, config_irq, errors = threading.Event(), threading.Event(), []
    guest.dev.transport.signal_queue = lambda index: index == RX and rx_irq.set()
    guest.dev.transport.signal_config = config_irq.set
    io = IoThread("net-test", errors.append)
    io.add(guest.backend.fileno(), guest.dev.receive, counter=False)
    io.start()
    try:
        request = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + MAC + \
            socket.inet_aton(GUEST_IP) + bytes(6) + socket.inet_aton(HOST_IP)
        guest.send(ether(b"\xff" * 6, 0x0806, request))
        assert rx_irq.wait(WAIT)
        with guest.dev.lock:
            frames = [d[HDR_MRG.size:w] for _, w, d in guest.rx.collect()]
        assert GATEWAY_MAC + socket.inet_aton(HOST_IP) in map(arp_reply, frames)
        os.kill(guest.backend.proc.pid, signal.SIGKILL)
        assert config_irq.wait(WAIT)
        # Closed, so out of the epoll set: the thread does not spin on EOF.
        assert guest.backend.sock.fileno() == -1
    finally:
        io.wake()
        assert io.join(WAIT)
    assert errors == [] and "passt killed by signal 9" in capsys.readouterr().err


def dhcp(kind: int, xid: int, *options: bytes) -> bytes:
    body = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4),
                       bytes(4), bytes(4)) + MAC + bytes(10) + bytes(192) + \
        b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + b"".join(options) + b"\xff"
    return ether(b"\xff" * 6, 0x0800, udp("0.0.0.0", "255.255.255.255", 68, 67, body))


def dhcp_reply(xid: int):
    def match(frame: bytes) -> tuple[int, str, dict] | None:
        if frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_UDP:
            return None
        body = frame[14 + (frame[14] & 0xF) * 4 + 8:]
        if body[0] != 2 or struct.unpack_from("!I", body, 4)[0] != xid:
            return None
        opts, i = {}, 240
        while i < len(body) and body[i] != 255:
            if body[i] == 0:
                i += 1
                continue
            opts[body[i]] = body[i + 2:i + 2 + body[i + 1]]
            i += 2 + body[i + 1]
        return opts[53][0], socket.inet_ntoa(body[16:20]), opts
    return match


@needs_passt
def test_passt_leases_the_guest_its_address_by_dhcp(guest):
    guest.send(dhcp(1, 0x1234))
    kind, offered, opts = guest.wait(dhcp_reply(0x1234))
    assert (kind, offered) == (2, GUEST_IP)          # OFFER
    assert opts[1] == socket.inet_aton("255.255.255.0") and opts[3] == socket.inet_aton(HOST_IP)
    guest.send(dhcp(3, 0x1235, bytes([50, 4]) + socket.inet_aton(GUEST_IP),
                    bytes([54, 4]) + opts[54]))
    kind, leased, opts = guest.wait(dhcp_reply(0x1235))
    assert (kind, leased) == (5, GUEST_IP)           # ACK
    assert opts[6] == socket.inet_aton(HOST_IP)      # DNS through the host


def tcp_from_host(port: int, flags: int):
    def match(frame: bytes) -> tuple[int, int, bytes] | None:
        if frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
            return None
        seg = frame[14 + (frame[14] & 0xF) * 4:]
        sport, dport, seq, ack, off, got = struct.unpack_from("!HHIIBB", seg)
        if (sport, dport) != (port, 40000) or got & flags != flags:
            return None
        return seq, ack, seg[(off >> 4) * 4:]
    return match


@needs_passt
def test_guest_connects_to_the_hosts_loopback_through_the_gateway(guest):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        seq = 1000
        guest.send(tcp(40000, port, seq, 0, SYN))
        their, ack, _ = guest.wait(tcp_from_host(port, SYN | ACK))
        assert ack == seq + 1
        seq, their = seq + 1, their + 1
        guest.send(tcp(40000, port, seq, their, ACK))
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            guest.send(tcp(40000, port, seq, their, ACK | PSH, b"hello from the guest"))
            assert conn.recv(100) == b"hello from the guest"
            conn.sendall(b"hello from the host")
            _, _, data = guest.wait(lambda f: r if (r := tcp_from_host(port, ACK)(f)) and r[2]
                                    else None)
            assert data == b"hello from the host"


@needs_passt
def test_passt_dying_takes_the_link_down_and_says_so_once(guest, capsys):
    os.kill(guest.backend.proc.pid, signal.SIGKILL)
    select.select([guest.backend.fileno()], [], [], WAIT)
    guest.dev.receive()
    guest.dev.receive()
    err = capsys.readouterr().err
    assert err.count("passt killed by signal 9; the guest's link is down") == 1, err
    assert not guest.dev.read_config(6, 2) & lib.VIRTIO_NET_S_LINK_UP


@needs_passt
@pytest.mark.parametrize("kw", [{"guest_ip": "192.168.33.256"}, {"host_ip": "10.0.0.1"},
                                {"prefix_len": 33}, {"host_mac": "02:01:01:01:01"}])
def test_bad_user_mode_settings_are_one_line(kw):
    with pytest.raises(LkvmError):
        Passt(**kw)


def test_missing_passt_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LkvmError, match="install Debian's passt package"):
        Passt()


@needs_passt
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a network namespace")
def test_user_mode_works_on_a_host_without_a_default_route():
    """passt will not start without a default route unless told which
    interface to take; a host off the network (the nested test host is
    one) has none.  The ARP, DHCP and TCP tests above, in a network
    namespace that has only lo."""
    tests = "passt_answers_arp or passt_leases or hosts_loopback_through_the_gateway"
    r = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest -q '
         '-p no:cacheprovider -m "not e2e" "$1" -k "$2"', sys.executable, __file__, tests],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        cwd=os.path.dirname(KVMDIR))
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout + r.stderr
