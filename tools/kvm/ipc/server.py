"""The server of a guest's IPC socket (the protocol is ipc/protocol.py's):
one thread serves ~/.lkvm/<name>.sock for `lkvm list`, `pause`, `stop`,
`debug` ...; a table maps each message type to its handler.
"""

import errno
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable

from include.uapi import lib
from ipc.protocol import (
    BALLOON,
    DEBUG,
    DEBUG_DUMP,
    DEBUG_NMI,
    DEBUG_PARAMS,
    DEBUG_SYSRQ,
    HEADER,
    MAX_PAYLOAD,
    PAUSE,
    PID,
    RESUME,
    S32,
    STAT,
    STOP,
    TRANSLATE,
    TRANSLATE_PARAMS,
    U32,
    VMSTATE,
    VMSTATE_PAUSED,
    VMSTATE_RUNNING,
    Handler,
    IpcError,
    is_live,
    socket_path,
)
from kvm import msg
from kvm.errors import LkvmError
from kvm.ioctl import ioctl

CLOSE_TIMEOUT = 10.0  # close() waits this long for the thread
# Connections waiting to be accepted while the thread serves another: a
# `lkvm list` loop over many guests, or 100 scripts at once, must queue,
# not be refused.  The kernel caps it at net.core.somaxconn.
BACKLOG = socket.SOMAXCONN
# Out of fds, the listener cannot accept and stays readable: it is left
# out of the select this long, so the thread waits instead of spinning.
ACCEPT_BACKOFF = 0.5


def _bind(path: str, name: str) -> socket.socket:
    """A listening socket at `path`.  It is bound under a private name and
    linked into place, so a socket file at `path` always has a listener:
    a client never mistakes a guest that is starting for a dead one."""
    tmp = f"{path}.{os.getpid()}.new"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)  # our pid's, from a killed run: nobody else's
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(BACKLOG)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)
                    return sock
                except FileExistsError:
                    pass
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise LkvmError(f"{path} exists and is not a socket")
                if is_live(path):
                    raise LkvmError(f"the guest name '{name}' is in use: "
                                    f"{path} belongs to a running guest")
                os.unlink(path)
                msg.info(f"removed stale socket {path}")
            raise LkvmError(f"cannot claim {path}: other guests keep taking it")
        finally:
            os.unlink(tmp)
    except OSError as e:
        sock.close()
        raise LkvmError(f"cannot create {path}: {e.strerror}") from None
    except LkvmError:
        sock.close()
        raise


class _Conn:
    """One client's bytes: requests not yet whole, a reply not yet sent."""
    __slots__ = ("buf", "out", "closing")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.out = bytearray()
        self.closing = False    # close once the reply is out


def _reserve_fd() -> int:
    """An fd held back for hard times; -1 when there is none to hold."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


class IpcServer:
    """Serves one guest's socket from a thread until close().  Handlers
    take the payload and return the reply payload, or raise IpcError; a
    table maps each message type to its handler and payload size."""

    def __init__(self, vm: object, name: str,
                 sysrq: Callable[[bytes], None] | None = None,
                 handlers: dict[int, tuple[Handler, int | None]] | None = None) -> None:
        self.vm = vm
        self.name = name
        self.sysrq = sysrq
        self.path = socket_path(name, create_dir=True)
        self.handlers: dict[int, tuple[Handler, int | None]] = {
            PID: (self._pid, 0),
            VMSTATE: (self._vmstate, 0),
            PAUSE: (self._pause, 0),
            RESUME: (self._resume, 0),
            STOP: (self._stop, 0),
            DEBUG: (self._debug, DEBUG_PARAMS.size),
            TRANSLATE: (self._translate, TRANSLATE_PARAMS.size),
            # Unless a balloon device brings its own.
            BALLOON: (self._no_balloon, S32.size),
            STAT: (self._no_balloon, 0),
            # Devices' own, in place before the first client can connect.
            **(handlers or {}),
        }
        self.sock = _bind(self.path, name)
        self.sock.setblocking(False)
        self.ino = os.stat(self.path).st_ino
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Given up when fds run out, so a waiting client can be accepted
        # and told why instead of left in the backlog.
        self._reserve = _reserve_fd()
        # Made here, not in the thread: every fd the server needs exists
        # before it serves, so running out of fds cannot stop it starting.
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._sel.register(self._wake, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._serve, name="kvm-ipc", daemon=True)
        self.thread.start()

    def register(self, msg_type: int, handler: Handler, size: int | None) -> None:
        """Serve `msg_type` with `handler`; `size` is the payload length it
        takes (None: any up to MAX_PAYLOAD)."""
        self.handlers[msg_type] = (handler, size)

    def close(self) -> None:
        """Remove the socket, end the thread, close every connection."""
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._wake is not None:
            os.eventfd_write(self._wake, 1)
            self.thread.join(CLOSE_TIMEOUT)

    def __enter__(self) -> "IpcServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The thread.  Connections are non-blocking: a reply that does not fit
    # in the socket waits in the connection's buffer, and nothing more is
    # read from that client until it is taken, so a client that never
    # reads holds only its own connection, and a bounded amount of memory.
    def _serve(self) -> None:
        sel = self._sel
        listening_again = None  # when the listener sits out after EMFILE
        try:
            while True:
                timeout = None
                if listening_again is not None:
                    timeout = max(0.0, listening_again - time.monotonic())
                    if timeout == 0.0:
                        sel.register(self.sock, selectors.EVENT_READ)
                        listening_again = timeout = None
                for key, events in sel.select(timeout):
                    if key.fileobj == self._wake:
                        return
                    if key.fileobj is self.sock:
                        if not self._accept(sel):
                            sel.unregister(self.sock)
                            listening_again = time.monotonic() + ACCEPT_BACKOFF
                    else:
                        self._service(sel, key.fileobj, key.data, events)
        finally:
            for key in list(sel.get_map().values()):
                if isinstance(key.fileobj, socket.socket) and key.fileobj is not self.sock:
                    key.fileobj.close()
            sel.close()
            self.sock.close()
            os.close(self._wake)
            if self._reserve >= 0:
                os.close(self._reserve)
            self._wake = None

    def _accept(self, sel: selectors.BaseSelector) -> bool:
        """Take one waiting client; False when fds ran out and nobody could
        be accepted, so the listener must sit out a while."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                return True
            return self._turn_away()
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, _Conn())
        return True

    def _turn_away(self) -> bool:
        """Out of fds: spend the reserve one to accept the first waiting
        client and tell it why, rather than leave it hanging."""
        if self._reserve < 0:
            self._reserve = _reserve_fd()
            return False
        os.close(self._reserve)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            with conn:
                message = f"guest '{self.name}': lkvm is out of file descriptors".encode()
                try:
                    conn.setblocking(False)
                    conn.send(HEADER.pack(errno.EMFILE, len(message)) + message)
                except OSError:
                    pass
        self._reserve = _reserve_fd()
        return conn is not None

    def _service(self, sel: selectors.BaseSelector, sock: socket.socket, conn: "_Conn",
                 events: int) -> None:
        alive = True
        if events & selectors.EVENT_WRITE:
            alive = self._send(sock, conn)
        if alive and events & selectors.EVENT_READ:
            alive = self._receive(sock, conn)
        if alive and not conn.out:
            alive = self._serve_buffered(sock, conn)
        if not alive or (conn.closing and not conn.out):
            sel.unregister(sock)
            sock.close()
        else:
            sel.modify(sock, selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ, conn)

    def _send(self, sock: socket.socket, conn: "_Conn") -> bool:
        try:
            n = sock.send(conn.out)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del conn.out[:n]
        return True

    def _receive(self, sock: socket.socket, conn: "_Conn") -> bool:
        """Read what is there; False ends the connection (peer gone)."""
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        conn.buf += data
        return bool(data)

    def _serve_buffered(self, sock: socket.socket, conn: "_Conn") -> bool:
        """Serve whole requests from the buffer while replies go straight
        out; False ends the connection (garbage or a failed send)."""
        buf = conn.buf
        while not conn.out and not conn.closing and len(buf) >= HEADER.size:
            msg_type, length = HEADER.unpack_from(buf)
            if length > MAX_PAYLOAD:
                return False
            if len(buf) < HEADER.size + length:
                break
            payload = bytes(buf[HEADER.size:HEADER.size + length])
            del buf[:HEADER.size + length]
            status, reply, keep = self._dispatch(msg_type, payload)
            conn.out += HEADER.pack(status, len(reply)) + reply
            conn.closing = not keep
            if not self._send(sock, conn):
                return False
        return True

    def _dispatch(self, msg_type: int, payload: bytes) -> tuple[int, bytes, bool]:
        """(status, reply, whether the connection may go on)."""
        entry = self.handlers.get(msg_type)
        if entry is None:
            return errno.EINVAL, f"unknown message type {msg_type}".encode(), False
        if entry[1] is not None and len(payload) != entry[1]:
            return (errno.EINVAL, f"message type {msg_type} takes {entry[1]} "
                    f"bytes, not {len(payload)}".encode(), False)
        try:
            return 0, entry[0](payload), True
        except IpcError as e:
            return e.errno, str(e).encode(), True
        except Exception as e:  # a bug here must not end the guest's IPC
            msg.warning(f"IPC message type {msg_type}: {e!r}")
            return errno.EIO, f"internal error: {e}".encode(), True

    # Handlers.
    def _pid(self, payload: bytes) -> bytes:
        return U32.pack(os.getpid())

    def _vmstate(self, payload: bytes) -> bytes:
        return U32.pack(VMSTATE_PAUSED if self.vm.paused or self.vm.held else VMSTATE_RUNNING)

    def _require_running(self) -> None:
        if self.vm.stopping:
            raise IpcError(errno.ESHUTDOWN, f"guest '{self.name}' is shutting down")

    def _pause(self, payload: bytes) -> bytes:
        """Answer only once every vCPU is out of KVM_RUN, and tell the
        guest's kvmclock, so its watchdogs forgive the lost time."""
        self._require_running()
        self.vm.pause()
        self._require_running()
        for vcpu in self.vm.vcpus:
            kvmclock_ctrl(vcpu)
        return b""

    def _resume(self, payload: bytes) -> bytes:
        """A guest gdb holds stays with gdb: running it behind gdb's back
        would leave gdb showing a stopped guest that runs, and its next
        stop reply unasked for."""
        self._require_running()
        if self.vm.held:
            raise IpcError(errno.EBUSY, f"guest '{self.name}' is stopped in gdb: "
                           "continue or detach it from gdb")
        self.vm.resume()
        return b""

    def _stop(self, payload: bytes) -> bytes:
        self.vm.stop(0)
        return b""

    def _debug(self, payload: bytes) -> bytes:
        flags, cpu, sysrq = DEBUG_PARAMS.unpack(payload)
        vcpus = self.vm.vcpus
        if flags & DEBUG_NMI and cpu >= len(vcpus):
            raise IpcError(errno.EINVAL, f"no vCPU {cpu}: guest '{self.name}' has "
                           f"{len(vcpus)}")
        if flags & DEBUG_SYSRQ:
            if self.sysrq is None:
                raise IpcError(errno.ENODEV, "no serial console for sysrq")
            self.sysrq(sysrq)
        if not flags & (DEBUG_NMI | DEBUG_DUMP):
            return b""
        # vCPU ioctls wait while the vCPU is in KVM_RUN: park them all.
        self._require_running()
        was_paused = self.vm.paused
        self.vm.pause()
        try:
            self._require_running()
            if flags & DEBUG_NMI:
                self.vm.arch.inject_nmi(vcpus[cpu])
            if not flags & DEBUG_DUMP:
                return b""
            return "".join(f"\n #\n # vCPU #{v.id}'s dump:\n #\n{self.vm.arch.dump_vcpu(v)}\n"
                           for v in vcpus).encode()
        finally:
            if not was_paused:
                self.vm.resume()

    def _translate(self, payload: bytes) -> bytes:
        cpu, addr = TRANSLATE_PARAMS.unpack(payload)
        vcpus = self.vm.vcpus
        if cpu >= len(vcpus):
            raise IpcError(errno.EINVAL, f"no vCPU {cpu}: guest '{self.name}' has "
                           f"{len(vcpus)}")
        # The walk needs the vCPU's control registers: park it like a dump.
        self._require_running()
        was_paused = self.vm.paused
        self.vm.pause()
        try:
            self._require_running()
            return (self.vm.arch.describe_translation(vcpus[cpu], addr) + "\n").encode()
        finally:
            if not was_paused:
                self.vm.resume()

    def _no_balloon(self, payload: bytes) -> bytes:
        raise IpcError(errno.ENODEV, f"guest '{self.name}' has no balloon device")


def kvmclock_ctrl(vcpu: object) -> None:
    """KVM_KVMCLOCK_CTRL: the guest will see it was stopped, not stuck.
    Hosts or guests without kvmclock refuse it, which is fine."""
    try:
        ioctl(vcpu.fd, lib.KVM_KVMCLOCK_CTRL, 0)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
            raise
