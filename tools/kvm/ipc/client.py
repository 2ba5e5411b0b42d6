"""The client side of the guests' IPC sockets (ipc/protocol.py): find running
guests, send a request, read the framed reply.  lkvm's own commands use
it; anything that speaks the protocol in Documentation/lkvm-ipc.txt can."""

import argparse
import errno
import os
import socket
import stat
import struct
from collections.abc import Callable

from cli.cmd import Parser
from ipc.protocol import HEADER, MAX_PAYLOAD, PID, SOCK_SUFFIX, U32, VMSTATE, socket_path
from kvm import msg
from kvm.errors import KVMTOOL_DIE, LkvmError, UsageError
from util.home import lkvm_dir

# Long enough for a pause on a loaded host or a dump of many vCPUs.
REPLY_TIMEOUT = 30.0
# How long a connect may wait for room in a busy guest's backlog.
CONNECT_TIMEOUT = 10.0
TIMEVAL = struct.Struct("@ll")


class GuestGone(LkvmError):
    """The guest is not running (any more): no socket, a dead one's, or it
    closed the connection unanswered."""


class Guest:
    """A connection to one running guest's socket."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, msg_type: int, payload: bytes = b"") -> bytes:
        """Send one request; the reply's payload, or LkvmError with the
        guest's reason."""
        try:
            self.sock.sendall(HEADER.pack(msg_type, len(payload)) + payload)
            status, length = HEADER.unpack(self._read(HEADER.size))
            if length > MAX_PAYLOAD * 1024:
                raise LkvmError(f"guest '{self.name}' sent a malformed reply")
            reply = self._read(length)
        except TimeoutError:
            raise LkvmError(f"guest '{self.name}' did not answer in "
                            f"{REPLY_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise LkvmError(f"guest '{self.name}': {e.strerror}") from None
        if status:
            raise LkvmError(reply.decode(errors="replace") or os.strerror(status))
        return reply

    def _read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise GuestGone(f"guest '{self.name}' went away before answering")
            data += chunk
        return bytes(data)

    def wait_closed(self) -> None:
        """Until the guest closes the connection: it has ended."""
        try:
            while self.sock.recv(4096):
                pass
        except TimeoutError:
            raise LkvmError(f"guest '{self.name}' did not end in "
                            f"{REPLY_TIMEOUT:.0f} s") from None
        except OSError:
            pass

    def pid(self) -> int:
        return U32.unpack(self.request(PID))[0]

    def vmstate(self) -> int:
        return U32.unpack(self.request(VMSTATE))[0]


def connect(name: str) -> Guest:
    """The running guest `name`.  A socket nobody answers on is a dead
    guest's leftover: removed, as kvmtool does."""
    path = socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _connect(sock, path)
    except OSError as e:
        sock.close()
        if e.errno == errno.ECONNREFUSED:
            remove_stale(path)
        elif e.errno != errno.ENOENT:
            raise LkvmError(f"cannot reach guest '{name}' at {path}: {e.strerror}") from None
        raise GuestGone(f"no running guest named '{name}' (see 'lkvm list')") from None
    sock.settimeout(REPLY_TIMEOUT)
    return Guest(name, sock)


def _connect(sock: socket.socket, path: str) -> None:
    """A blocking connect, bounded by SO_SNDTIMEO.  A non-blocking one (what
    settimeout() gives) fails at once with EAGAIN when the guest's backlog
    is full; a blocking one waits for the guest to accept, as long as the
    send timeout allows, and only then says EAGAIN."""
    sec = int(CONNECT_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    TIMEVAL.pack(sec, int((CONNECT_TIMEOUT - sec) * 1_000_000)))
    sock.connect(path)


def remove_stale(path: str) -> None:
    try:
        os.unlink(path)
        msg.info(f"removed stale socket {path}")
    except FileNotFoundError:
        pass


def guest_names() -> list[str]:
    """Names of the sockets in ~/.lkvm, sorted: guests that may be running."""
    try:
        entries = list(os.scandir(lkvm_dir()))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LkvmError(f"cannot read {lkvm_dir()}: {e.strerror}") from None
    names = []
    for entry in entries:
        try:
            is_sock = stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            continue
        if is_sock and entry.name.endswith(SOCK_SUFFIX) and len(entry.name) > len(SOCK_SUFFIX):
            names.append(entry.name[:-len(SOCK_SUFFIX)])
    return sorted(names)


def running() -> list[Guest]:
    """A connection to every running guest; leftovers are cleaned away and
    guests that end meanwhile are skipped.  One that cannot be reached is
    told on stderr, not passed over in silence."""
    guests = []
    for name in guest_names():
        try:
            guests.append(connect(name))
        except GuestGone:
            continue
        except LkvmError as e:
            msg.warning(str(e))
    return guests


def instance_parser(cmd: str) -> Parser:
    """The options of commands that act on running guests, kvmtool's."""
    p = Parser(cmd)
    p.add_argument("-a", "--all", action="store_true", help="every running guest")
    p.add_argument("-n", "--name", help="the guest's name")
    p.set_defaults(cmd=cmd)
    return p


def for_each(args: argparse.Namespace, action: Callable[[Guest], None]) -> int:
    """Run `action` on the guest named by -n, or on every guest with -a.
    With -a, one guest's failure is told and the rest still served."""
    if args.all == bool(args.name):
        raise UsageError(f"give either -n NAME or -a (see 'lkvm help {args.cmd}')")
    if args.name:
        with connect(args.name) as guest:
            action(guest)
        return 0
    guests = running()
    if not guests:
        raise LkvmError("no running guests")
    status = 0
    for guest in guests:
        with guest:
            try:
                action(guest)
            except LkvmError as e:
                msg.error(str(e))
                status = KVMTOOL_DIE
    return status
