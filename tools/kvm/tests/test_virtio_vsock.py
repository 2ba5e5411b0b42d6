"""virtio-vsock through the mock driver, as Linux's vsock transport
drives it: connections both ways through the userspace back end's unix
sockets, credit both ways, and a hostile guest (bad headers, wrong CIDs,
unknown ops, credit overruns, too many connections, never reading);
the vhost back end's set-up against a recording ioctl."""

import contextlib
import os
import select
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.uapi import lib
from tests.fakevhost import FakeVhostKernel, KickTransport, driven
from tests.helpers import guest, run_lkvm
from virtio.mock import LOW_RAM, Driver, mock_memory
from virtio.vhost import Vhost
from virtio.vsock import (
    BUF_ALLOC,
    HDR,
    HOST_PORTS,
    MAX_CONNS,
    MAX_PAYLOAD,
    MAX_RESETS,
    OP,
    SHUT_BOTH,
    SHUT_SEND,
    VHOST_VSOCK,
    VhostVsock,
    Vsock,
)

CID = 3
STREAM = lib.VIRTIO_VSOCK_TYPE_STREAM
RX_BUF = HDR.size + 4096        # what Linux posts
GUEST_BUF = 256 << 10           # the guest's buf_alloc
WAIT = 5.0                      # seconds a host socket gets to become ready


class Guest:
    """A guest's vsock driver, and the host side's sockets."""

    def __init__(self, base: str, rx_bufs: int = 16) -> None:
        self.dev = Vsock(mock_memory(), CID, base)
        self.drv = Driver(self.dev)
        self.rx, self.tx, self.ev = self.drv.start()
        self.base = base
        self.fwd_cnt = 0
        self.post(rx_bufs)

    def post(self, n: int, size: int = RX_BUF) -> None:
        for _ in range(n):
            self.rx.add([], [size])
        self.rx.kick()

    def send(self, op: int, src_port: int, dst_port: int, payload: bytes = b"", *,
             src_cid: int = CID, dst_cid: int = 2, kind: int = STREAM, flags: int = 0,
             length: int | None = None, buf_alloc: int = GUEST_BUF) -> None:
        hdr = HDR.pack(src_cid, dst_cid, src_port, dst_port,
                       len(payload) if length is None else length, kind, op, flags,
                       buf_alloc, self.fwd_cnt)
        self.tx.add([hdr, payload] if payload else [hdr], [])
        self.tx.kick()
        assert [w for _, w, _ in self.tx.collect()] == [0]

    def received(self) -> list[tuple[tuple, bytes]]:
        """Packets in the receive queue: (header fields, payload)."""
        out = []
        for _, written, data in self.rx.collect():
            hdr = HDR.unpack(data[:HDR.size])
            assert written == HDR.size + hdr[4]
            out.append((hdr, data[HDR.size:written]))
        return out

    def use_up_rx(self) -> None:
        """Take every posted receive buffer (with RSTs to junk)."""
        self.received()
        for _ in range(len(self.rx.inflight)):
            self.send(OP["RW"], 1, 1, b"x")
        self.received()
        assert not self.rx.inflight

    def ops(self) -> list[int]:
        return [hdr[6] for hdr, _ in self.received()]

    def pump(self) -> None:
        """Serve the host side until it has nothing more to do now."""
        for _ in range(1000):
            if not select.select([self.dev.epoll.fileno()], [], [], 0)[0]:
                return
            self.dev.host_events()
        raise AssertionError("the host side never settles")

    def close(self) -> None:
        self.dev.close()


@pytest.fixture
def g(tmp_path):
    guest = Guest(str(tmp_path / "vm.vsock"))
    yield guest
    guest.close()


def listener(g: Guest, port: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(f"{g.base}_{port}")
    s.listen(MAX_CONNS * 2)
    s.settimeout(WAIT)
    return s


def connect_guest(g: Guest, port: int, guest_port: int = 5000) -> socket.socket:
    """The guest connects to host port `port`; the host end, accepted."""
    g.send(OP["REQUEST"], guest_port, port)
    ((hdr, _),) = g.received()
    assert hdr[:4] == (2, CID, port, guest_port) and hdr[6] == OP["RESPONSE"]
    assert hdr[8] == BUF_ALLOC
    return hdr


def host_connect(g: Guest, port: int) -> tuple[socket.socket, int]:
    """A host program CONNECTs to guest port `port`; the guest accepts."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(g.base)
    s.sendall(f"CONNECT {port}\n".encode())
    g.pump()
    ((hdr, _),) = g.received()
    assert hdr[6] == OP["REQUEST"] and hdr[:2] == (2, CID) and hdr[3] == port
    host_port = hdr[2]
    assert host_port >= HOST_PORTS
    g.send(OP["RESPONSE"], port, host_port)
    g.pump()
    return s, host_port


def test_config_holds_the_guest_cid(g):
    assert g.dev.device_id == lib.VIRTIO_ID_VSOCK and len(g.dev.queues) == 3
    assert g.dev.read_config(0, 8) == CID


def test_guest_connects_to_a_host_listener_and_talks_both_ways(g):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            g.send(OP["RW"], 5000, 1234, b"hello host")
            assert conn.recv(100) == b"hello host"
            conn.sendall(b"hello guest")
            g.pump()
            ((hdr, data),) = g.received()
            assert hdr[6] == OP["RW"] and data == b"hello guest"
            assert hdr[9] == len(b"hello host")     # fwd_cnt: what the host took
            # The guest is done: a full shutdown gets our RST, the host EOF.
            g.send(OP["SHUTDOWN"], 5000, 1234, flags=SHUT_BOTH)
            assert g.ops() == [OP["RST"]]
            assert conn.recv(10) == b""
    assert not g.dev.conns and not g.dev.by_fd


def test_guest_connecting_where_nobody_listens_is_reset(g):
    g.send(OP["REQUEST"], 5000, 4321)
    ((hdr, _),) = g.received()
    assert hdr[6] == OP["RST"] and hdr[2:4] == (4321, 5000)
    assert not g.dev.conns


def test_host_connects_into_the_guest(g):
    s, host_port = host_connect(g, 80)
    with s:
        assert s.recv(100) == f"OK {host_port}\n".encode()
        s.sendall(b"ping")
        g.pump()
        ((hdr, data),) = g.received()
        assert hdr[6] == OP["RW"] and data == b"ping" and hdr[2:4] == (host_port, 80)
        g.send(OP["RW"], 80, host_port, b"pong")
        assert s.recv(100) == b"pong"
        s.shutdown(socket.SHUT_WR)      # host EOF: the guest hears SHUTDOWN(SEND)
        g.pump()
        ((hdr, _),) = g.received()
        assert hdr[6] == OP["SHUTDOWN"] and hdr[7] == SHUT_SEND
        g.send(OP["SHUTDOWN"], 80, host_port, flags=SHUT_BOTH)
        assert OP["RST"] in g.ops()
        assert s.recv(10) == b""


def test_data_after_the_connect_line_waits_for_the_guest(g):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.settimeout(WAIT)
        s.connect(g.base)
        s.sendall(b"CONNECT 7\nearly")
        g.pump()
        ((hdr, _),) = g.received()
        g.send(OP["RESPONSE"], 7, hdr[2])
        g.pump()
        ((hdr, data),) = g.received()
        assert hdr[6] == OP["RW"] and data == b"early"


@pytest.mark.parametrize("line", [b"CONNECT\n", b"CONNECT x\n", b"HELLO 5\n",
                                  b"CONNECT 99999999999\n", b"CONNECT 5 6\n",
                                  b"C" * 40, b"CONNECT 5"])
def test_bad_connect_lines_are_hung_up_on(g, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.settimeout(WAIT)
        s.connect(g.base)
        s.sendall(line)
        if not line.endswith(b"\n") and len(line) < 32:
            s.shutdown(socket.SHUT_WR)      # a partial line, then EOF
        g.pump()
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass                            # closed with the line unread
    assert g.received() == [] and not g.dev.by_fd


def test_packets_with_wrong_cids_are_dropped_unanswered(g):
    with listener(g, 1234):
        g.send(OP["REQUEST"], 5000, 1234, src_cid=CID + 1)
        g.send(OP["REQUEST"], 5000, 1234, dst_cid=CID)
        g.send(OP["REQUEST"], 5000, 1234, dst_cid=1)
    assert g.received() == [] and not g.dev.conns and g.dev.dropped == 3


@pytest.mark.parametrize("kw", [{"kind": lib.VIRTIO_VSOCK_TYPE_SEQPACKET}, {"kind": 77},
                                {"length": 100}, {"length": MAX_PAYLOAD + 1}])
def test_bad_headers_are_reset(g, kw):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            g.send(OP["RW"], 5000, 1234, b"x", **kw)
            assert g.ops() == [OP["RST"]]
            assert conn.recv(10) == b""     # and the host end is closed
    assert not g.dev.conns


@pytest.mark.parametrize("op", [lib.VIRTIO_VSOCK_OP_INVALID, 8, 0xFFFF])
def test_unknown_ops_are_reset(g, op):
    g.send(op, 5000, 1234)
    assert g.ops() == [OP["RST"]]


@pytest.mark.parametrize("op", ["RW", "RESPONSE", "SHUTDOWN", "CREDIT_UPDATE",
                                "CREDIT_REQUEST"])
def test_packets_for_no_connection_are_reset(g, op):
    g.send(OP[op], 5000, 1234, b"x" if op == "RW" else b"")
    assert g.ops() == [OP["RST"]]


def test_rst_for_no_connection_is_not_answered(g):
    g.send(OP["RST"], 5000, 1234)
    assert g.received() == []


def test_short_headers_and_device_writable_transmits_are_dropped(g):
    g.tx.add([b"\0" * (HDR.size - 1)], [])
    g.tx.add([], [HDR.size])
    g.tx.kick()
    assert len(g.tx.collect()) == 2
    assert g.received() == [] and g.dev.dropped == 2


def test_a_second_request_on_a_live_connection_is_reset(g):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            g.send(OP["REQUEST"], 5000, 1234)
            assert g.ops() == [OP["RST"]]
            assert conn.recv(10) == b""


def test_credit_overrun_is_reset_and_held_bytes_are_bounded(g):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            g.use_up_rx()               # so the guest hears of no credit update
            for _ in range(BUF_ALLOC // MAX_PAYLOAD):
                g.send(OP["RW"], 5000, 1234, b"x" * MAX_PAYLOAD)
            assert len(g.dev.conns[(5000, 1234)].to_host) <= BUF_ALLOC
            g.send(OP["RW"], 5000, 1234, b"x")
            assert not g.dev.conns
            g.post(1)
            assert g.ops() == [OP["RST"]]


def test_credit_updates_follow_the_host_reading(g):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for _ in range(BUF_ALLOC // MAX_PAYLOAD):
                g.send(OP["RW"], 5000, 1234, b"y" * MAX_PAYLOAD)
            got = 0
            while got < BUF_ALLOC:      # the host catches up: the guest hears of it
                got += len(conn.recv(1 << 20))
                g.pump()
            fwd = [hdr[9] for hdr, _ in g.received() if hdr[6] == OP["CREDIT_UPDATE"]]
            assert fwd and BUF_ALLOC - fwd[-1] < BUF_ALLOC // 2     # half its credit back
            g.send(OP["CREDIT_REQUEST"], 5000, 1234)
            ((hdr, _),) = g.received()
            assert hdr[6] == OP["CREDIT_UPDATE"] and hdr[9] == BUF_ALLOC


def test_a_guest_with_half_its_credit_left_hears_nothing(g):
    """Credit updates cost the guest an interrupt each: none while it can
    still send half a window, one once it has used more."""
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            for _ in range(BUF_ALLOC // 2 // 4096):
                g.send(OP["RW"], 5000, 1234, b"q" * 4096)
            assert g.ops() == []
            g.send(OP["RW"], 5000, 1234, b"q")
            ((hdr, _),) = g.received()
            assert hdr[6] == OP["CREDIT_UPDATE"] and hdr[9] == BUF_ALLOC // 2 + 1
            conn.settimeout(WAIT)
            got = 0
            while got < BUF_ALLOC // 2 + 1:
                got += len(conn.recv(1 << 20))


def test_a_kick_of_many_packets_reaches_the_host_in_order(g):
    """Linux queues packets and kicks once: every one goes to the host
    socket in order, headers and payloads split across descriptors any
    way, and the guest hears of the room once for the lot."""
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            sent = b""
            for i in range(40):
                data = bytes([i]) * (i * 2999 % 11000 + 1)
                hdr = HDR.pack(CID, 2, 5000, 1234, len(data), STREAM, OP["RW"], 0,
                               GUEST_BUF, 0)
                cut = i % (HDR.size + 1)
                pieces = [hdr[:cut], hdr[cut:] + data[:i], data[i:2 * i], data[2 * i:]]
                g.tx.add([p for p in pieces if p], [], indirect=bool(i & 1))
                sent += data
            g.tx.set_used_event(g.tx.last_used)     # as Linux asks
            irqs = g.drv.transport.queue_irqs[1]
            g.tx.kick()
            assert [w for _, w, _ in g.tx.collect()] == [0] * 40
            conn.settimeout(WAIT)
            got = b""
            while len(got) < len(sent) and (more := conn.recv(1 << 20)):
                got += more
                g.pump()        # what the socket had no room for yet
            assert got == sent
            fwd = [hdr[9] for hdr, _ in g.received() if hdr[6] == OP["CREDIT_UPDATE"]]
            assert len(sent) > BUF_ALLOC // 2 and len(fwd) == 1    # once, for the lot
            assert BUF_ALLOC - (len(sent) - fwd[0]) >= BUF_ALLOC // 2
            assert g.drv.transport.queue_irqs[1] == irqs + 1    # one for the lot


def test_host_data_never_exceeds_the_guests_credit(g):
    with listener(g, 1234) as srv:
        g.send(OP["REQUEST"], 5000, 1234, buf_alloc=10000)
        g.received()
        conn, _ = srv.accept()
        with conn:
            conn.setblocking(False)
            conn.send(b"z" * 30000)
            g.pump()
            got = b"".join(d for _, d in g.received())
            assert got == b"z" * 10000          # its credit, and not a byte more
            g.fwd_cnt = 10000                   # the guest read it all
            g.send(OP["CREDIT_UPDATE"], 5000, 1234, buf_alloc=10000)
            g.pump()
            assert b"".join(d for _, d in g.received()) == b"z" * 10000


def test_host_data_lands_in_buffers_split_anywhere(g):
    """The host's bytes go straight into the guest's buffers, after a
    header that may itself be split: in order, none lost, none past a
    chain's end, whatever the descriptor sizes."""
    g.use_up_rx()
    for sizes in ([HDR.size], [HDR.size, 100], [7, HDR.size - 7 + 5, 1, 94], [HDR.size + 3, 0, 97]):
        g.rx.add([], sizes)
    g.rx.kick()
    data = bytes(range(256)) + b"tail"
    with listener(g, 1234) as srv:
        g.send(OP["REQUEST"], 5000, 1234)
        conn, _ = srv.accept()
        with conn:
            conn.sendall(data)
            g.pump()
            packets = g.received()
    assert packets[0][0][6] == OP["RESPONSE"]
    assert [len(d) for _, d in packets[1:]] == [100, 100, 60]
    assert b"".join(d for _, d in packets[1:]) == data


def test_a_guest_that_never_reads_leaves_the_host_writer_blocked(g):
    g.rx.collect()
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)          # takes one of the posted buffers
        conn, _ = srv.accept()
        with conn:
            conn.setblocking(False)
            sent = 0
            with pytest.raises(BlockingIOError):
                for _ in range(10000):
                    sent += conn.send(b"w" * 65536)
                    g.pump()
            g.pump()
            got = sum(len(d) for _, d in g.received())
            assert got == 15 * 4096         # the 15 buffers left, then nothing
            assert got < sent               # the rest waits in the host socket
            assert not g.dev.conns[(5000, 1234)].events & select.EPOLLIN


def test_connections_are_bounded(g):
    with listener(g, 1234) as srv:
        for port in range(MAX_CONNS):
            g.send(OP["REQUEST"], 6000 + port, 1234)
            g.post(1)
        assert g.ops() == [OP["RESPONSE"]] * MAX_CONNS
        g.send(OP["REQUEST"], 9999, 1234)
        assert g.ops() == [OP["RST"]]
        # A host program is turned away too.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with s:
            s.settimeout(WAIT)
            s.connect(g.base)
            g.pump()
            assert s.recv(10) == b""
        accepted = [srv.accept()[0] for _ in range(MAX_CONNS)]
        for c in accepted:
            c.close()


def test_resets_waiting_for_buffers_are_bounded(g):
    g.use_up_rx()
    for port in range(MAX_RESETS * 3):
        g.send(OP["RW"], port, 1, b"x")
    assert len(g.dev.resets) == MAX_RESETS
    g.post(4)
    assert g.ops() == [OP["RST"]] * 4


def test_receive_buffer_smaller_than_a_header_stops_the_device(g, capsys):
    g.use_up_rx()
    g.rx.add([], [HDR.size - 1])
    g.rx.kick()
    g.send(OP["RW"], 5000, 1, b"x")
    assert g.dev.broken
    assert "vsock receive buffer" in capsys.readouterr().err


def test_reset_closes_every_connection(g):
    with listener(g, 1234) as srv:
        connect_guest(g, 1234)
        conn, _ = srv.accept()
        with conn:
            g.dev.reset()
            assert conn.recv(10) == b""
    assert not g.dev.conns and not g.dev.by_fd


def test_close_removes_the_socket(tmp_path):
    base = str(tmp_path / "vm.vsock")
    Guest(base).close()
    assert not os.path.exists(base)


def test_a_dead_lkvms_socket_is_replaced_and_a_file_is_not(tmp_path):
    base = str(tmp_path / "vm.vsock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(base)
    s.close()                   # a leftover: nobody listens
    Guest(base).close()
    with open(base, "w"):
        pass
    with pytest.raises(Exception, match="cannot listen"):
        Guest(base)
    assert os.path.isfile(base)


# The vhost back end, against a kernel that records what it is told.
def vhost_vsock(mem: object) -> tuple[VhostVsock, Driver, KickTransport]:
    dev = VhostVsock(mem, CID, Vhost(os.devnull, f"--vsock {CID}", mem, 2))
    return dev, *driven(dev)


def test_vhost_gets_the_memory_table_rings_and_eventfds(vhost_kernel):
    mem = mock_memory()
    dev, drv, transport = vhost_vsock(mem)
    # Only what the kernel serves is offered; seqpacket is not among it.
    assert dev.offered() == FakeVhostKernel.FEATURES
    assert vhost_kernel.calls == [("VHOST_SET_OWNER",),
                            ("VHOST_SET_MEM_TABLE", [(r.gpa, r.size, r.host) for r in mem.regions]),
                            ("VHOST_VSOCK_SET_GUEST_CID", CID)]
    rx, tx, _ = drv.start()
    host = {r.gpa: r.host for r in mem.regions}
    calls = dev.vhost.fallback
    assert vhost_kernel.calls[3:] == [
        ("VHOST_SET_FEATURES", FakeVhostKernel.FEATURES),
        *[c for q, dq in ((0, rx), (1, tx)) for c in (
            ("VHOST_SET_VRING_NUM", q, dq.size),
            ("VHOST_SET_VRING_BASE", q, 0),
            ("VHOST_SET_VRING_ADDR", q, host[0] + dq.desc, host[0] + dq.avail, host[0] + dq.used),
            ("VHOST_SET_VRING_KICK", q, transport.kicks[q]))],
        ("VHOST_SET_VRING_CALL", 0, calls[0]), ("VHOST_SET_VRING_CALL", 1, calls[1]),
        ("VHOST_VSOCK_SET_RUNNING", 1)]
    io = transport.iothread
    assert transport.kicks[0] not in io.handlers and transport.kicks[2] in io.handlers
    assert all(fd in io.handlers for fd in calls)
    del vhost_kernel.calls[:]
    dev.reset()
    assert vhost_kernel.calls == [("VHOST_VSOCK_SET_RUNNING", 0),
                            ("VHOST_SET_VRING_KICK", 0, -1), ("VHOST_SET_VRING_CALL", 0, -1),
                            ("VHOST_SET_VRING_KICK", 1, -1), ("VHOST_SET_VRING_CALL", 1, -1)]
    assert all(fd in io.handlers for fd in transport.kicks)
    assert not any(fd in io.handlers for fd in calls)
    dev.close()
    transport.close()


def test_vhost_with_rings_outside_ram_stops_the_device(vhost_kernel, capsys):
    dev, drv, transport = vhost_vsock(mock_memory())
    drv.negotiate()
    for q in range(3):
        drv.setup_queue(q)
    dev.queues[0].used_addr = LOW_RAM - 8   # the used ring runs past low RAM
    dev.set_status(dev.status | lib.VIRTIO_CONFIG_S_DRIVER_OK)
    assert dev.broken and not dev.vhost.running
    assert ("VHOST_VSOCK_SET_RUNNING", 1) not in vhost_kernel.calls
    assert all(fd in transport.iothread.handlers for fd in transport.kicks)
    dev.close()
    transport.close()


# The command line.
@pytest.mark.parametrize("args, error", [
    (["--vsock", "2"], "--vsock 2: a guest CID is from 3 to 4294967294"),
    (["--vsock", "4294967295"], "--vsock 4294967295: a guest CID is from 3 to 4294967294"),
    (["--vsock-uds", "/tmp/x"], "--vsock-uds and --vsock-backend need --vsock CID"),
    (["--vsock", "3", "--vsock-backend", "vhost", "--vsock-uds", "/tmp/x"],
     "--vsock-uds is the userspace back end's; vhost-vsock's host end is AF_VSOCK"),
])
def test_bad_vsock_options_are_one_clear_line(args, error, lkvm_home):
    r = run_lkvm("run", "-c", "1", "-m", "16", *args, guest("hello"))
    assert r.returncode != 0
    assert r.stderr.decode().splitlines() == [f"  Fatal: {error}"]


@pytest.mark.skipif(os.path.exists(VHOST_VSOCK), reason="this host has vhost-vsock")
def test_vhost_asked_for_and_missing_is_one_clear_line(lkvm_home):
    r = run_lkvm("run", "-c", "1", "-m", "16", "--vsock", "3", "--vsock-backend", "vhost",
                 guest("hello"))
    assert r.returncode != 0
    assert r.stderr.decode().splitlines() == [
        f"  Fatal: --vsock-backend vhost needs {VHOST_VSOCK}, which this host does not have "
        "(modprobe vhost_vsock); --vsock-backend user is lkvm's own"]


@pytest.mark.parametrize("transport", ["pci", "mmio", "pci-legacy", "mmio-legacy"])
def test_a_guest_runs_with_vsock_on_every_transport(transport, lkvm_home):
    r = run_lkvm("run", "-c", "1", "-m", "16", "--vsock", "3", "--vsock-backend", "user",
                 "--virtio-transport", transport, guest("hello"))
    assert r.returncode == 0, r.stderr
    assert b"Hello, lkvm!" in r.stdout
    assert not [f for f in os.listdir(os.path.join(lkvm_home, ".lkvm")) if "vsock" in f]


# Hostile sequences, property-based.
PORTS = [1234, 1235, 5000, 0, 0xFFFFFFFF]
OPS = [*OP.values(), 0, 8, 0xFFFF]
LENGTHS = [0, 1, 4096, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xFFFFFFFF]
CREDITS = [0, 1, 4096, GUEST_BUF, 0xFFFFFFFF]


@settings(deadline=None, database=None, max_examples=300,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(PORTS), st.sampled_from(PORTS),
                          st.sampled_from(LENGTHS), st.integers(0, 3), st.sampled_from(CREDITS),
                          st.sampled_from(CREDITS), st.sampled_from([CID, CID + 1]),
                          st.booleans(), st.booleans()), max_size=40))
def test_hostile_packet_sequences_keep_every_bound(tmp_path_factory, packets):
    base = str(tmp_path_factory.mktemp("fuzz") / "v")
    g = Guest(base, rx_bufs=4)
    srv = listener(g, 1234)
    srv.setblocking(False)
    host_ends = []
    try:
        for op, src, dst, length, flags, buf_alloc, fwd, src_cid, short, host_talks in packets:
            g.fwd_cnt = fwd
            payload = b"p" * min(length, MAX_PAYLOAD) if op == OP["RW"] else b""
            g.send(op, src, dst, payload[:-1] if short and payload else payload,
                   src_cid=src_cid, flags=flags, buf_alloc=buf_alloc,
                   length=length if short else None)
            if host_talks:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        c, _ = srv.accept()
                        c.setblocking(False)
                        host_ends.append(c)
                for c in host_ends:
                    with contextlib.suppress(OSError):
                        c.send(b"h" * 5000)
                        c.recv(1 << 16)
                g.pump()
            if g.dev.broken:
                break
            assert len(g.dev.by_fd) <= MAX_CONNS and len(g.dev.resets) <= MAX_RESETS
            assert all(len(c.to_host) <= BUF_ALLOC for c in g.dev.conns.values())
            for hdr, data in g.received():
                assert hdr[:2] == (2, CID) and hdr[5] == STREAM and hdr[4] == len(data)
                assert hdr[6] in OP.values() and hdr[8] == BUF_ALLOC
            g.post(1)
    finally:
        for c in host_ends:
            c.close()
        srv.close()
        g.close()
