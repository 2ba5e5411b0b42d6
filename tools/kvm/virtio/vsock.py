"""virtio-vsock (virtio 1.x §5.10): stream sockets between the guest
(its CID from --vsock) and the host (CID 2), over a receive, a transmit
and an event queue.  Every packet is a virtio_vsock_hdr and its payload.

Two back ends.  With /dev/vhost-vsock the kernel serves the receive and
transmit queues (VhostVsock, virtio/vhost.py) and host programs use
AF_VSOCK.  Without it lkvm is the other end itself (Vsock), and host
programs use unix sockets, as Firecracker's vsock does:

  - a guest connecting to host port P reaches whoever listens on the
    unix socket `<base>_P`;
  - a host program connects to `<base>` itself, writes `CONNECT P\\n`
    and reads `OK <host port>\\n` once the guest accepts on port P;
    after that the socket is the stream, both ways.

<base> is --vsock-uds, or ~/.lkvm/<name>.vsock beside the IPC socket.

Flow control is the spec's credit (§5.10.6.3): each side says how much
it buffers (buf_alloc) and how much it has passed on (fwd_cnt), and the
other never has more than that in flight.  lkvm holds at most BUF_ALLOC
bytes of each connection's guest data while its host socket is slow,
and a guest that sends past its credit gets its connection reset.  The
other way, host bytes are read only while the guest has credit and
receive buffers, so a guest that never reads leaves them in the host
socket, where the writer blocks.  At most MAX_CONNS connections, so
one guest makes lkvm hold at most MAX_CONNS * BUF_ALLOC bytes.
"""

import contextlib
import errno
import os
import select
import socket
import stat
from collections import deque
from dataclasses import dataclass, field

from include.uapi import ffi, lib
from ipc.protocol import is_live
from kvm import msg
from kvm.cstruct import packer, to_bytes
from kvm.errors import GuestError, LkvmError
from kvm.iothread import IoThread
from virtio.device import VirtioDevice
from virtio.iov import prefix, scatter, split, total
from virtio.queue import Chain, QueueError, Virtqueue
from virtio.vhost import Handover, Vhost

RX, TX, EVENT = 0, 1, 2
HDR = packer("struct virtio_vsock_hdr")
HOST_CID = socket.VMADDR_CID_HOST
MAX_CID = 0xFFFFFFFE            # VMADDR_CID_ANY (-1U) is no guest's
MAX_PAYLOAD = 64 << 10          # the largest packet Linux sends (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE)
BUF_ALLOC = 256 << 10           # guest bytes held per connection for a slow host socket
MAX_CONNS = 64                  # live connections, host programs still saying CONNECT included
MAX_RESETS = 2 * MAX_CONNS      # RSTs waiting for receive buffers; more are dropped
BURST = 16                      # host packets to the guest per connection and wake-up
MAX_LINE = 32                   # "CONNECT 4294967295\n" and then some
HOST_PORTS = 1 << 30            # host ports of host-initiated connections count up from here
U32 = 0xFFFFFFFF
VHOST_VSOCK = "/dev/vhost-vsock"

OP = {name: getattr(lib, f"VIRTIO_VSOCK_OP_{name}") for name in
      ("REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST")}
SHUT_RCV, SHUT_SEND = lib.VIRTIO_VSOCK_SHUTDOWN_RCV, lib.VIRTIO_VSOCK_SHUTDOWN_SEND
SHUT_BOTH = SHUT_RCV | SHUT_SEND
OPS = frozenset(OP.values())
RW = OP["RW"]


def check_cid(cid: int) -> int:
    """0-2 are the hypervisor's, the local and the host's (vm_sockets.h)."""
    if not HOST_CID < cid <= MAX_CID:
        raise LkvmError(f"--vsock {cid}: a guest CID is from {HOST_CID + 1} to {MAX_CID}")
    return cid


class Cid(VirtioDevice):
    """What both back ends show the driver: the guest's CID and three queues."""
    device_id = lib.VIRTIO_ID_VSOCK
    name = "vsock"
    num_queues = 3

    def __init__(self, mem: object, cid: int) -> None:
        super().__init__(mem)
        self.cid = cid
        self.config = bytearray(to_bytes("struct virtio_vsock_config", guest_cid=cid))


@dataclass(eq=False)
class Conn:
    """One stream: the guest's port, the host's, and its host socket."""
    sock: socket.socket
    guest_port: int = 0
    host_port: int = 0
    state: str = "open"         # "connect": reading CONNECT; "request": guest to answer
    line: bytes = b""           # a host program's CONNECT line so far
    greeting: bytes = b""       # "OK <host port>\n", before any guest byte
    to_host: bytearray = field(default_factory=bytearray)  # guest bytes the socket has yet
    rx_cnt: int = 0             # guest bytes received
    fwd_cnt: int = 0            # guest bytes the host socket took
    told_fwd: int = 0           # fwd_cnt as the guest last heard it
    tx_cnt: int = 0             # host bytes put in the guest's buffers
    peer_buf_alloc: int = 0     # the guest's credit, from its last header
    peer_fwd_cnt: int = 0
    guest_shut: int = 0         # SHUTDOWN flags the guest sent
    host_eof: bool = False
    ops: dict[int, int] = field(default_factory=dict)  # control packets due: op -> flags
    events: int = 0             # what the host socket is polled for

    @property
    def key(self) -> tuple[int, int]:
        return self.guest_port, self.host_port

    def credit(self) -> int:
        """Host bytes the guest can take now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32
        return max(self.peer_buf_alloc - in_flight, 0)


class Vsock(Cid):
    """The userspace back end.  The device's I/O thread polls an epoll
    set of its unix sockets and calls host_events()."""

    def __init__(self, mem: object, cid: int, base: str) -> None:
        super().__init__(mem, cid)
        self.base = base
        self.conns: dict[tuple[int, int], Conn] = {}
        self.by_fd: dict[int, Conn] = {}
        self.resets: deque[tuple[int, int]] = deque()   # (guest port, host port)
        self.rx_starved = False     # the guest posted no receive buffer last time we looked
        self.rx_signalled = 0       # the receive queue's used index the driver heard of
        self.next_port = HOST_PORTS
        self.dropped = 0            # packets dropped: bad headers, wrong CIDs, no room
        self.epoll = select.epoll()
        self.listener = listen(base)
        self.epoll.register(self.listener, select.EPOLLIN)

    def serve_on(self, iothread: IoThread) -> None:
        iothread.add(self.epoll.fileno(), self.host_events, counter=False)

    def on_reset(self) -> None:
        for conn in list(self.by_fd.values()):
            self._drop(conn)
        self.resets.clear()
        self.rx_starved = False
        self.rx_signalled = 0

    def close(self) -> None:
        self.on_reset()
        self.epoll.close()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.base)

    # The queues.
    def process(self, index: int, queue: Virtqueue) -> None:
        if index == TX:
            while (chain := queue.pop()) is not None:
                self._packet(chain)
                queue.push(chain.head, 0)
        elif index == RX:
            self.rx_starved = False
            for conn in self.conns.values():
                self._watch(conn)
        # EVENT: lkvm never resets the transport under a live driver; the
        # buffers stay posted.
        if index != EVENT:
            self._deliver(index == RX)

    def _deliver(self, notified: bool) -> None:
        """Put due control packets in the receive queue; interrupt the
        driver for them and any data put there since the last call,
        unless notify(RX), which called us, will."""
        q = self.queues[RX]
        if not q.enabled or self.broken:
            return
        old = self.rx_signalled
        while self.resets or any(c.ops for c in self.conns.values()):
            chain = q.pop()
            if chain is None:
                self._starve()
                break
            if self.resets:
                guest_port, host_port = self.resets.popleft()
                self._put(q, chain, self._hdr(guest_port, host_port, OP["RST"]))
            else:
                conn = next(c for c in self.conns.values() if c.ops)
                op, flags = next(iter(conn.ops.items()))
                del conn.ops[op]
                self._put(q, chain, self._conn_hdr(conn, op, flags=flags))
                self._watch(conn)
        if not notified and q.needs_interrupt(old):
            self.transport.signal_queue(RX)
        self.rx_signalled = q.used_idx

    def _starve(self) -> None:
        """No receive buffer: stop reading host sockets until the driver
        posts some (its RX notification)."""
        self.rx_starved = True
        for conn in self.conns.values():
            self._watch(conn)

    def _put(self, q: Virtqueue, chain: Chain, hdr: bytes, payload: bytes = b"") -> None:
        if total(chain.writable) < HDR.size:
            raise QueueError(f"vsock receive buffer of {total(chain.writable)} bytes")
        q.push(chain.head, scatter(chain.writable, hdr + payload))

    def _hdr(self, guest_port: int, host_port: int, op: int, length: int = 0,
             flags: int = 0, fwd_cnt: int = 0) -> bytes:
        return HDR.pack(HOST_CID, self.cid, host_port, guest_port, length,
                        lib.VIRTIO_VSOCK_TYPE_STREAM, op, flags, BUF_ALLOC, fwd_cnt & U32)

    def _conn_hdr(self, conn: Conn, op: int, length: int = 0, flags: int = 0) -> bytes:
        conn.told_fwd = conn.fwd_cnt
        conn.ops.pop(OP["CREDIT_UPDATE"], None)     # this header says it
        return self._hdr(conn.guest_port, conn.host_port, op, length, flags, conn.fwd_cnt)

    # Packets from the guest.
    def _packet(self, chain: Chain) -> None:
        first = chain.readable[0] if chain.readable else b""
        # Linux gives the header a descriptor of its own: read it there.
        head = first if len(first) >= HDR.size else prefix(chain.readable, HDR.size)
        if chain.writable or len(head) < HDR.size:
            self.dropped += 1
            return
        (src_cid, dst_cid, src_port, dst_port, length, kind, op, flags, buf_alloc,
         fwd_cnt) = HDR.unpack_from(head)
        if src_cid != self.cid or dst_cid != HOST_CID:
            self.dropped += 1   # not the guest's to send: no answer either
            return
        key = (src_port, dst_port)
        conn = self.conns.get(key)
        if (kind != lib.VIRTIO_VSOCK_TYPE_STREAM or length > MAX_PAYLOAD or
                chain.readable_size < HDR.size + length or op not in OPS):
            self._reset(key, conn)
            return
        if conn is not None:
            conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        if op == RW and conn is not None and conn.state == "open":
            # The stream's payload, as views of guest memory: it goes to
            # the host socket from there.
            payload, _ = split(split(chain.readable, HDR.size)[1], length)
            self._data(conn, payload, length)
        elif op == OP["REQUEST"]:
            self._guest_connects(key, conn, buf_alloc, fwd_cnt)
        elif op == OP["RST"]:
            if conn is not None:
                self._drop(conn)
        elif conn is None or conn.state == "request" and op != OP["RESPONSE"]:
            self._reset(key, conn)
        elif op == OP["RESPONSE"]:
            self._guest_accepts(conn)
        elif op == OP["SHUTDOWN"]:
            conn.guest_shut |= flags & SHUT_BOTH
            self._flush(conn)
        elif op == OP["CREDIT_REQUEST"]:
            conn.ops[OP["CREDIT_UPDATE"]] = 0
        if conn is not None and conn.key in self.conns:
            self._watch(conn)   # the guest's credit may have grown

    def _guest_connects(self, key: tuple[int, int], conn: Conn | None,
                        buf_alloc: int, fwd_cnt: int) -> None:
        """The guest connects to host port key[1]: to `<base>_<port>`."""
        if conn is not None or len(self.by_fd) >= MAX_CONNS:
            self._reset(key, conn)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(f"{self.base}_{key[1]}")
        except OSError:         # nobody listens (or their backlog is full): refused
            sock.close()
            self._reset(key, None)
            return
        conn = Conn(sock, *key, peer_buf_alloc=buf_alloc, peer_fwd_cnt=fwd_cnt)
        conn.ops[OP["RESPONSE"]] = 0
        self._add(conn)

    def _guest_accepts(self, conn: Conn) -> None:
        if conn.state != "request":
            self._reset(conn.key, conn)
            return
        conn.state = "open"
        conn.greeting = f"OK {conn.host_port}\n".encode()
        self._flush(conn)

    def _data(self, conn: Conn, payload: list[memoryview], length: int) -> None:
        # Its credit is what it heard of: at most BUF_ALLOC past told_fwd
        # (so never more than that held here, as fwd_cnt >= told_fwd).
        if conn.guest_shut & SHUT_SEND or conn.rx_cnt + length - conn.told_fwd > BUF_ALLOC:
            self._reset(conn.key, conn)     # past its credit, or after saying it was done
            return
        conn.rx_cnt += length
        self._flush(conn, payload)

    def _reset(self, key: tuple[int, int], conn: Conn | None) -> None:
        if conn is not None:
            self._drop(conn)
        if len(self.resets) < MAX_RESETS:
            self.resets.append(key)
        else:
            self.dropped += 1

    # The host side.
    def host_events(self) -> None:
        """The I/O thread saw the epoll set readable."""
        with self.lock:
            try:
                for fd, events in self.epoll.poll(0):
                    if fd == self.listener.fileno():
                        self._accept()
                    elif (conn := self.by_fd.get(fd)) is not None:
                        self._host_io(conn, events)
                self._deliver(notified=False)
            except GuestError as e:
                self.fail(str(e))

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.by_fd) >= MAX_CONNS:
            sock.close()        # turned away at once, or it would poll again and again
            return
        sock.setblocking(False)
        self._add(Conn(sock, state="connect"))

    def _add(self, conn: Conn) -> None:
        self.by_fd[conn.sock.fileno()] = conn
        if conn.state != "connect":
            self.conns[conn.key] = conn
        self._watch(conn)

    def _drop(self, conn: Conn) -> None:
        self.conns.pop(conn.key, None)
        if self.by_fd.pop(conn.sock.fileno(), None) is not None and conn.events:
            self.epoll.unregister(conn.sock)
        conn.sock.close()

    def _watch(self, conn: Conn) -> None:
        """Poll the host socket for what the connection can do now."""
        want = 0
        if conn.state == "connect" or (conn.state == "open" and not conn.host_eof and
                                       not conn.guest_shut & SHUT_RCV and conn.credit() and
                                       not self.rx_starved and OP["RESPONSE"] not in conn.ops):
            want |= select.EPOLLIN
        if conn.greeting or conn.to_host:
            want |= select.EPOLLOUT
        if want == conn.events:
            return
        if not want:
            self.epoll.unregister(conn.sock)    # or a hung-up socket polls forever
        elif conn.events:
            self.epoll.modify(conn.sock, want)
        else:
            self.epoll.register(conn.sock, want)
        conn.events = want

    def _host_io(self, conn: Conn, events: int) -> None:
        if conn.events & select.EPOLLOUT:
            self._flush(conn)
        if conn.sock.fileno() in self.by_fd and conn.events & select.EPOLLIN:
            (self._connect_line if conn.state == "connect" else self._host_data)(conn)
        if conn.sock.fileno() in self.by_fd:
            self._watch(conn)

    def _connect_line(self, conn: Conn) -> None:
        """A host program says which guest port: `CONNECT <port>\\n`."""
        try:
            # Up to the newline and no further: what follows is the stream.
            data = conn.sock.recv(MAX_LINE - len(conn.line), socket.MSG_PEEK)
            data = conn.sock.recv(data.find(b"\n") + 1 or len(data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.line += data
        if not conn.line.endswith(b"\n"):
            if not data or len(conn.line) >= MAX_LINE:
                self._drop(conn)
            return
        words = conn.line.split()
        if len(words) != 2 or words[0] != b"CONNECT" or not words[1].isdigit() \
                or int(words[1]) > U32:
            self._drop(conn)
            return
        del self.by_fd[conn.sock.fileno()]
        conn.state, conn.guest_port, conn.host_port = "request", int(words[1]), self._host_port()
        conn.ops[OP["REQUEST"]] = 0
        self._add(conn)

    def _host_port(self) -> int:
        used = {c.host_port for c in self.conns.values()}
        while self.next_port in used:
            self.next_port = max((self.next_port + 1) & U32, HOST_PORTS)
        port, self.next_port = self.next_port, max((self.next_port + 1) & U32, HOST_PORTS)
        return port

    def _host_data(self, conn: Conn) -> None:
        """Host bytes to the guest, a receive buffer at a time, while its
        credit and buffers last: up to BURST packets a wake-up, so that a
        busy connection leaves the others their turn."""
        q = self.queues[RX]
        for _ in range(BURST):
            if not conn.credit() or conn.host_eof or conn.sock.fileno() not in self.by_fd:
                return
            chain = q.pop() if q.enabled and not self.broken else None
            if chain is None:
                self._starve()
                return
            room = total(chain.writable) - HDR.size
            if room <= 0:
                raise QueueError(f"vsock receive buffer of {total(chain.writable)} bytes")
            try:
                data = conn.sock.recv(min(room, conn.credit(), MAX_PAYLOAD))
            except (BlockingIOError, InterruptedError):
                q.rewind(1)
                return
            except OSError:
                data = b""
            if not data:
                conn.host_eof = True
                self._put(q, chain, self._conn_hdr(conn, OP["SHUTDOWN"], flags=SHUT_SEND))
                self._maybe_close(conn)
                return
            self._put(q, chain, self._conn_hdr(conn, OP["RW"], len(data)), data)
            conn.tx_cnt = (conn.tx_cnt + len(data)) & U32

    def _flush(self, conn: Conn, payload: list[memoryview] | None = None) -> None:
        """Write what the guest sent to the host socket, as far as it takes
        it: what waits here first, then `payload` straight from guest
        memory, of which only what the socket refuses is copied to wait;
        tell the guest of the room made when it runs short."""
        try:
            if conn.greeting:
                conn.greeting = conn.greeting[conn.sock.send(conn.greeting):]
            if conn.to_host and not conn.greeting:
                n = conn.sock.send(conn.to_host)
                del conn.to_host[:n]
                conn.fwd_cnt += n
            if payload and not conn.to_host and not conn.greeting:
                n = conn.sock.sendmsg(payload)
                conn.fwd_cnt += n
                payload = split(payload, n)[1]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                msg.warning(f"virtio-vsock: host port {conn.host_port}: {e.strerror}")
            self._reset(conn.key, conn)
            return
        if payload:
            conn.to_host += b"".join(payload)
        # Like Linux's transport, only when the guest runs short: an update
        # once it has, by what it last heard, less than half its credit
        # left and a quarter of it has gone through since.  A guest out
        # of credit hears as soon as that much is through, so it never
        # waits for ever; one with credit left sends without waiting.
        if conn.rx_cnt - conn.told_fwd > BUF_ALLOC // 2 and \
                conn.fwd_cnt - conn.told_fwd >= BUF_ALLOC // 4:
            conn.ops[OP["CREDIT_UPDATE"]] = 0
        if not conn.to_host and conn.guest_shut & SHUT_SEND:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._maybe_close(conn)

    def _maybe_close(self, conn: Conn) -> None:
        """Both ends done, or the guest shut both ways: the closing end
        waits for our RST (as Linux's transport does)."""
        if conn.guest_shut == SHUT_BOTH and not conn.to_host or \
                conn.host_eof and conn.guest_shut & SHUT_SEND and not conn.to_host:
            self._reset(conn.key, conn)


class VhostVsock(Handover, Cid):
    """The kernel's back end: vhost-vsock serves the receive and transmit
    queues once the driver is ready (handed over on the I/O thread, as
    virtio/vhost.py says); the event queue stays here, idle."""
    features = 1 << lib.VIRTIO_VSOCK_F_SEQPACKET    # if the kernel has it
    vhost_rings = 2             # RX and TX

    def __init__(self, mem: object, cid: int, vhost: Vhost) -> None:
        super().__init__(mem, cid)
        self.vhost = vhost
        try:
            vhost.set_u64(lib.VHOST_VSOCK_SET_GUEST_CID, cid)
        except OSError as e:
            self.close()
            raise LkvmError(f"--vsock {cid}: {VHOST_VSOCK}: {e.strerror}") from None

    def vhost_serve(self, on: bool) -> None:
        self.vhost.ioctl(lib.VHOST_VSOCK_SET_RUNNING, ffi.new("int *", int(on)))

    def process(self, index: int, queue: Virtqueue) -> None:
        """The event queue's buffers stay posted; nothing happens here that
        would need one (lkvm never resets the transport under the guest)."""


def make(mem: object, cid: int, uds: str | None, backend: str, default_base: str) -> Cid:
    """The back end --vsock-backend names; "auto" is vhost where the host
    has it, unless --vsock-uds asks for lkvm's unix sockets."""
    if backend == "vhost" or (backend == "auto" and uds is None and
                              os.path.exists(VHOST_VSOCK)):
        return VhostVsock(mem, cid, Vhost(VHOST_VSOCK, f"--vsock {cid}", mem, 2))
    return Vsock(mem, cid, uds or default_base)


def check_backend(backend: str, base: str | None) -> None:
    """Checked with the other options: one clear line for what cannot be."""
    if backend == "vhost" and base is not None:
        raise LkvmError("--vsock-uds is the userspace back end's; "
                        "vhost-vsock's host end is AF_VSOCK")
    if backend == "vhost" and not os.path.exists(VHOST_VSOCK):
        raise LkvmError(f"--vsock-backend vhost needs {VHOST_VSOCK}, which this host does "
                        "not have (modprobe vhost_vsock); --vsock-backend user is lkvm's own")


def listen(base: str) -> socket.socket:
    """The unix socket host programs CONNECT through."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(base).st_mode) and not is_live(base):
            os.unlink(base)     # a dead lkvm's
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(base)
        sock.listen(MAX_CONNS)
    except OSError as e:
        sock.close()
        raise LkvmError(f"--vsock: cannot listen on {base}: {e.strerror}") from None
    sock.setblocking(False)
    return sock
