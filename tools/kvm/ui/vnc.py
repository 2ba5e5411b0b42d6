"""--vnc: the guest's framebuffer over VNC, an RFB 3.8 server written
against the protocol's specification (RFC 6143), as kvmtool's ui/vnc.c
serves its framebuffer through libvncserver (PyPI has no maintained VNC
server library to use instead).

It is the least the specification allows: no authentication (it listens
on the loopback only), raw encoding only, and 32 bits per pixel true
colour in whatever byte order the client asks for.  Keyboard and pointer
events are read and dropped: lkvm has no input path from a display yet.
Every client is bounded: a few at a time, a deadline for the handshake,
messages of known size but for cut text, which is read off capped.
"""

import select
import socket
import struct
import threading

from hw.vesa import Framebuffer
from kvm import msg
from kvm.errors import LkvmError

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
HOST = "127.0.0.1"
FIRST_PORT, PORTS = 5900, 100       # display :0 and up, as VNC viewers number them
MAX_CLIENTS = 4
HANDSHAKE_SECONDS = 10.0
POLL_SECONDS = 0.05                 # how often a waiting incremental update looks again
MAX_CUT_TEXT = 1 << 20

# Client to server message types (RFC 6143 §7.5) and their sizes after
# the type byte; cut text adds its text.
SET_PIXEL_FORMAT, SET_ENCODINGS, UPDATE_REQUEST, KEY_EVENT, POINTER_EVENT, CUT_TEXT = \
    0, 2, 3, 4, 5, 6
BODY_SIZE = {SET_PIXEL_FORMAT: 19, SET_ENCODINGS: 3, UPDATE_REQUEST: 9, KEY_EVENT: 7,
             POINTER_EVENT: 5, CUT_TEXT: 7}
FRAMEBUFFER_UPDATE, RAW = 0, 0

# PIXEL_FORMAT (§7.4): bits per pixel, depth, big-endian, true colour,
# red/green/blue max, red/green/blue shift, 3 bytes of padding.
PIXEL_FORMAT = struct.Struct(">BBBBHHHBBB3x")
# The framebuffer's own: x8r8g8b8 in little-endian words, so in memory
# blue, green, red, unused.
NATIVE = (32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
SOURCE_BYTE = {"r": 2, "g": 1, "b": 0}


class ClientGone(Exception):
    pass


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ClientGone
        data += chunk
    return data


def byte_order(fmt: tuple[int, ...]) -> dict[str, int] | None:
    """Where each colour's byte goes in a pixel of format `fmt`, or None
    for a format this server cannot send (anything but 32-bit true
    colour with 8-bit channels on byte boundaries)."""
    bpp, _, big_endian, true_colour, *maxes, rs, gs, bs = fmt
    if bpp != 32 or not true_colour or maxes != [255, 255, 255]:
        return None
    shifts = {"r": rs, "g": gs, "b": bs}
    if any(s % 8 or s > 24 for s in shifts.values()) or len(set(shifts.values())) != 3:
        return None
    return {c: 3 - s // 8 if big_endian else s // 8 for c, s in shifts.items()}


class Client:
    """One viewer: the handshake, then its requests, on a thread of its own."""

    def __init__(self, conn: socket.socket, fb: Framebuffer, name: bytes,
                 stopping: threading.Event) -> None:
        self.conn, self.fb, self.name, self.stopping = conn, fb, name, stopping
        self.order = byte_order(NATIVE)
        self.pending: tuple[int, int, int, int, int] | None = None
        self.sent = bytearray(len(fb.pixels))   # the screen as the client has it
        self.fresh = True                       # nothing sent in the current format yet

    def serve(self) -> None:
        try:
            self.conn.settimeout(HANDSHAKE_SECONDS)
            self._handshake()
            self.conn.settimeout(None)
            while not self.stopping.is_set():
                wait = POLL_SECONDS if self.pending else None
                if select.select([self.conn], [], [], wait)[0]:
                    self._message()
                if self.pending:
                    self._update()
        except (ClientGone, OSError):
            pass
        finally:
            self.conn.close()

    def _handshake(self) -> None:
        self.conn.sendall(VERSION)
        if recv_exact(self.conn, len(VERSION))[:4] != b"RFB ":
            raise ClientGone
        self.conn.sendall(bytes([1, SECURITY_NONE]))
        if recv_exact(self.conn, 1)[0] != SECURITY_NONE:
            raise ClientGone
        self.conn.sendall(struct.pack(">I", 0))         # SecurityResult: OK
        recv_exact(self.conn, 1)                        # ClientInit's shared flag
        self.conn.sendall(struct.pack(">HH", self.fb.width, self.fb.height) +
                          PIXEL_FORMAT.pack(*NATIVE) +
                          struct.pack(">I", len(self.name)) + self.name)

    def _message(self) -> None:
        kind = recv_exact(self.conn, 1)[0]
        if kind not in BODY_SIZE:
            raise ClientGone                # unknown sizes: the stream cannot be followed
        body = recv_exact(self.conn, BODY_SIZE[kind])
        if kind == SET_PIXEL_FORMAT:
            fmt = PIXEL_FORMAT.unpack(body[3:])
            self.order = byte_order(fmt)
            if self.order is None:
                msg.warning(f"VNC: a client asked for {fmt[0]} bits per pixel; lkvm "
                            "serves 32-bit true colour only")
                raise ClientGone
            self.fresh = True
        elif kind == SET_ENCODINGS:
            recv_exact(self.conn, 4 * struct.unpack_from(">H", body, 1)[0])  # raw is always there
        elif kind == UPDATE_REQUEST:
            self.pending = struct.unpack(">BHHHH", body)
        elif kind == CUT_TEXT:
            length = struct.unpack_from(">I", body, 3)[0]
            if length > MAX_CUT_TEXT:
                raise ClientGone
            recv_exact(self.conn, length)

    def _update(self) -> None:
        """Answer the pending request: at once if it wants the whole area,
        else once some of its rows changed, with those rows."""
        incremental, x, y, w, h = self.pending
        x, y = min(x, self.fb.width), min(y, self.fb.height)
        w, h = min(w, self.fb.width - x), min(h, self.fb.height - y)
        screen, stride = bytes(self.fb.pixels), self.fb.stride
        lo, hi = 4 * x, 4 * (x + w)
        if incremental and not self.fresh:
            rows = [r for r in range(y, y + h) if screen[r * stride + lo:r * stride + hi] !=
                    self.sent[r * stride + lo:r * stride + hi]]
            if not rows:
                return
            y, h = rows[0], rows[-1] - rows[0] + 1
        for r in range(y, y + h):
            self.sent[r * stride + lo:r * stride + hi] = screen[r * stride + lo:r * stride + hi]
        self.pending, self.fresh = None, False
        self.conn.sendall(struct.pack(">BxHHHHHi", FRAMEBUFFER_UPDATE, 1, x, y, w, h, RAW) +
                          self._pixels(screen, x, y, w, h))

    def _pixels(self, screen: bytes, x: int, y: int, w: int, h: int) -> bytes:
        stride = self.fb.stride
        rect = b"".join(screen[r * stride + 4 * x:r * stride + 4 * (x + w)]
                        for r in range(y, y + h))
        out = bytearray(len(rect))
        for colour, dst in self.order.items():
            out[dst::4] = rect[SOURCE_BYTE[colour]::4]
        return bytes(out)


class VncServer:
    """Listens on the loopback, on the first free port from 5900 up."""

    def __init__(self, fb: Framebuffer, name: str) -> None:
        self.fb, self.name = fb, name.encode()
        self.stopping = threading.Event()
        self.clients: list[tuple[Client, threading.Thread]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for port in range(FIRST_PORT, FIRST_PORT + PORTS):
            try:
                self.sock.bind((HOST, port))
                break
            except OSError:
                continue
        else:
            self.sock.close()
            raise LkvmError(f"--vnc: no free port in {FIRST_PORT}-{FIRST_PORT + PORTS - 1}")
        self.sock.listen(MAX_CLIENTS)
        self.port = port
        self.thread = threading.Thread(target=self._accept, name="kvm-vnc", daemon=True)
        msg.info(f"VNC server listening on {HOST}:{port} (display :{port - FIRST_PORT})")

    def start(self) -> None:
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients = [(c, t) for c, t in self.clients if t.is_alive()]
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            client = Client(conn, self.fb, self.name, self.stopping)
            t = threading.Thread(target=client.serve, name="kvm-vnc-client", daemon=True)
            self.clients.append((client, t))
            t.start()

    def close(self) -> None:
        """Stop listening and end every client (shutdown wakes a thread
        waiting on its socket; the thread closes it)."""
        self.stopping.set()
        for sock in (self.sock, *(c.conn for c, _ in self.clients)):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()
