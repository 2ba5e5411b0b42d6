"""The gdb stub: one thread serves one gdb at a time on a TCP socket.

A stopped guest is one whose vCPUs the stub holds (Vm.hold, the pause
machinery's parking), so `lkvm list` shows it paused and `lkvm stop`
still ends it.  A vCPU that hits a breakpoint or ends a step holds every
vCPU from its own thread and wakes the stub, which then answers gdb.
Threads are vCPUs, numbered from 1 as gdb wants.  What gdb sends is
network input: every problem is answered in the protocol, said once per
client on stderr, and never ends the guest.
"""

import os
import selectors
import socket
import threading
from collections.abc import Callable

from include.uapi import lib
from kvm import msg
from kvm.devices import STUCK_SECONDS
from kvm.errors import GuestError, LkvmError
from kvm.gdb.packet import MAX_PACKET, Event, Reader, frame
from kvm.gdb.target import GdbTarget, HwPoint, Stop, Watch

PAGE = 4096
SIGINT = 2
PROBLEMS = {
    Event.GARBAGE: "bytes outside a packet ignored",
    Event.BAD_CHECKSUM: "a packet with a bad checksum refused",
    Event.OVERSIZED: f"a packet over {MAX_PACKET} bytes refused",
}
# A gdb that stops reading its replies is dropped after this long.
SEND_TIMEOUT = 10.0
ERROR_IO = b"E05"     # EIO: KVM refused
ERROR_ARGS = b"E22"    # EINVAL: a malformed or impossible request
ERROR_MEMORY = b"E14"  # EFAULT: nothing mapped there
ERROR_FULL = b"E28"    # ENOSPC: no debug register left
ERROR_RUNNING = b"E16"  # EBUSY: the guest runs; interrupt it first


class Client:
    """One gdb connection and what the stub said about it."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = Reader()
        self.acks = True
        self.last = b""  # the last packet sent, for a '-'
        self.said: set[str] = set()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            # Gone, or not reading for SEND_TIMEOUT: end the connection,
            # and the next read drops the client.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def once(self, problem: str) -> None:
        if problem not in self.said:
            self.said.add(problem)
            msg.warning(f"gdb {self.peer}: {problem}")


def _hex_int(text: bytes) -> int:
    return int(text, 16)


def _thread_id(text: bytes) -> int:
    """gdb's thread id (hex; 0 any, -1 all) as an int."""
    return -1 if text == b"-1" else _hex_int(text)


class GdbStub:
    name = "gdb"

    def __init__(self, vm: object, target: GdbTarget, host: str, port: int,
                 wait: bool) -> None:
        self.vm = vm
        self.target = target
        self.all = {v.id for v in vm.vcpus}
        try:
            self.listener = socket.create_server((host, port), reuse_port=False)
        except OSError as e:
            raise LkvmError(f"--gdb {host}:{port}: cannot listen: {e.strerror}") from None
        self.listener.setblocking(False)
        self.wait = wait
        self.client: Client | None = None
        self.current = 0           # the vCPU g, m and friends act on (Hg)
        self.running = not wait
        self.last_stop = (0, Stop())
        self.sw: dict[int, tuple[int, bytes]] = {}  # address: (physical, original)
        self.hw: list[HwPoint] = []
        self._events: list[tuple[int, Stop]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._quit = False
        self._thread: threading.Thread | None = None
        self._sel = selectors.DefaultSelector()
        for vcpu in vm.vcpus:
            vcpu.exits[lib.KVM_EXIT_DEBUG] = self._debug_exit(vcpu)
            vcpu.exits[lib.KVM_EXIT_INTERNAL_ERROR] = self._internal_error(
                vcpu, vcpu.exits[lib.KVM_EXIT_INTERNAL_ERROR])
        if wait:
            vm.hold(self.all)
        self.commands: dict[bytes, Callable[[bytes], bytes | None]] = {
            b"?": lambda _: self._stop_reply(),
            b"q": self._query,
            b"Q": self._set,
            b"H": self._select_thread,
            b"T": lambda a: b"OK" if self._vcpu_of(a) is not None else ERROR_ARGS,
            b"g": self._read_registers,
            b"G": self._write_registers,
            b"p": self._read_register,
            b"P": self._write_register,
            b"m": self._read_memory,
            b"M": self._write_memory,
            b"Z": self._insert,
            b"z": self._remove,
            b"c": lambda a: self._resume(None, a),
            b"C": lambda a: self._resume(None, a.partition(b";")[2]),
            b"s": lambda a: self._resume(self.current, a),
            b"S": lambda a: self._resume(self.current, a.partition(b";")[2]),
            b"v": self._v,
            b"D": self._detach,
            b"k": self._kill,
        }

    # The Device life: the registry starts and ends the thread.
    def init(self) -> None:
        host, port = self.listener.getsockname()[:2]
        msg.info(f"gdb: listening on {host}:{port}" +
                 ("; the guest waits for gdb to continue it" if self.wait else ""))
        self._thread = threading.Thread(target=self._serve, name="gdb", daemon=True)
        self._thread.start()

    def exit(self) -> None:
        self._quit = True
        self._wake()
        if self._thread is None:  # never started: a run that failed first
            self._sel.close()
            self.listener.close()
        else:
            self._thread.join(STUCK_SECONDS)
            if self._thread.is_alive():
                return  # stuck sending: it and its fds go with the process
        os.close(self._wake_r)
        os.close(self._wake_w)

    # From vCPU threads.
    def _debug_exit(self, vcpu: object) -> Callable[[], None]:
        def handler() -> None:
            stop = self.target.stop_reason(vcpu, self.hw)
            if stop.reason == "swbreak" and stop.addr not in self.sw:
                self.target.pass_trap(vcpu)  # the guest's own
            else:
                self._stopped(vcpu, stop)
        return handler

    def _internal_error(self, vcpu: object, fatal: Callable[[], None]) -> Callable[[], None]:
        def handler() -> None:
            if (pc := self.target.failed_trap(vcpu)) in self.sw:
                self._stopped(vcpu, Stop("swbreak", pc))
            else:
                fatal()
        return handler

    def _stopped(self, vcpu: object, stop: Stop) -> None:
        self.vm.hold(self.all)
        with self._lock:
            self._events.append((vcpu.id, stop))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake is pending already

    # The thread.
    def _serve(self) -> None:
        self._sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._woken)
        try:
            while not self._quit:
                for key, _ in self._sel.select():
                    try:
                        key.data()
                    except Exception as e:  # a bug here must not leave gdb hanging
                        msg.warning(f"gdb: {e!r}")
        finally:
            if self.client is not None:
                # The guest ended under gdb: tell it how.
                self._send(b"W%02x" % (self.vm.exit_status & 0xFF))
                self._drop()
            self._sel.close()
            self.listener.close()

    def _accept(self) -> None:
        try:
            sock, peer = self.listener.accept()
        except OSError:
            return
        where = f"{peer[0]}:{peer[1]}"
        if self.client is not None:
            self.client.once("other clients refused: one gdb at a time")
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_TIMEOUT)
        self.client = Client(sock, where)
        self._sel.register(sock, selectors.EVENT_READ, self._receive)
        msg.info(f"gdb: {where} attached")
        if self.running:  # gdb finds the guest stopped
            self._stop_all()
            self.last_stop = (self.current, Stop())
            self.running = False

    def _drop(self) -> None:
        self._sel.unregister(self.client.sock)
        self.client.sock.close()
        self.client = None

    def _woken(self) -> None:
        try:
            os.read(self._wake_r, 64)
        except BlockingIOError:
            pass
        with self._lock:
            events, self._events = self._events, []
        if not events or not self.running:
            return
        self.vm.wait_held()
        self.running = False
        self.last_stop = events[0]
        self.current = events[0][0]
        if self.client is not None:
            self._send(self._stop_reply())

    def _receive(self) -> None:
        client = self.client
        try:
            data = client.sock.recv(MAX_PACKET)
        except OSError:
            data = b""
        if not data:
            if client.reader.mid_packet:
                client.once("disconnected in the middle of a packet")
            msg.info(f"gdb: {client.peer} went away; the guest runs on")
            self._drop()
            self._let_go()
            return
        for r in client.reader.feed(data):
            if r.event == Event.PACKET:
                if client.acks:
                    client.send(b"+")
                self._packet(r.payload)
                if self.client is None:
                    return  # detached or killed
            elif r.event == Event.INTERRUPT:
                if self.running:
                    self._stop_all()
                    self.running = False
                    self.last_stop = (self.current, Stop(signal=SIGINT))
                    self._send(self._stop_reply())
            elif r.event == Event.NAK:
                if client.last:
                    client.send(client.last)
            elif r.event in PROBLEMS:
                client.once(PROBLEMS[r.event])
                if r.event != Event.GARBAGE and client.acks:
                    client.send(b"-")

    def _packet(self, payload: bytes) -> None:
        handler = self.commands.get(payload[:1])
        if handler is None:
            reply = b""  # the protocol's "not supported"
        elif self.running and payload[:1] not in b"?Dk":
            reply = ERROR_RUNNING
        else:
            try:
                reply = handler(payload[1:])
            except (ValueError, IndexError):
                self.client.once(f"malformed packet {payload[:24]!r}")
                reply = ERROR_ARGS
            except OSError as e:  # KVM refused (the VM may be ending)
                self.client.once(f"{payload[:24]!r}: {e.strerror}")
                reply = ERROR_IO
        if reply is not None:
            self._send(reply)

    def _send(self, payload: bytes) -> None:
        packet = frame(payload)
        self.client.last = packet
        self.client.send(packet)

    # Stopping and going.
    def _stop_all(self) -> None:
        self.vm.hold(self.all)
        if not self.vm.wait_held() and not self.vm.stopping:
            self.client.once(f"a vCPU did not stop within {STUCK_SECONDS:.0f} s")
        with self._lock:
            self._events.clear()

    def _resume(self, step: int | None, addr: bytes) -> None:
        if addr:  # resume somewhere else
            pc = self.target.PC
            self.target.write_register(self._vcpu(), pc, _hex_int(addr).to_bytes(
                self.target.sizes[pc], "little"))
        for vcpu in self.vm.vcpus:
            self.target.set_debug(vcpu, vcpu.id == step, bool(self.sw), self.hw)
        with self._lock:
            self._events.clear()
        self.running = True
        self.vm.release(self.all if step is None else {step})
        return None

    def _let_go(self) -> None:
        """gdb is gone: no breakpoints, no debugging, and the guest runs."""
        for addr in list(self.sw):
            self._remove_sw(addr)
        self.hw.clear()
        for vcpu in self.vm.vcpus:
            self.target.set_debug(vcpu, False, False, [])
        self.running = True
        self.vm.release(self.all)

    def _detach(self, _: bytes) -> None:
        self._send(b"OK")
        msg.info(f"gdb: {self.client.peer} detached; the guest runs on")
        self._drop()
        self._let_go()

    def _kill(self, _: bytes) -> None:
        msg.info(f"gdb: {self.client.peer} killed the guest")
        self._drop()
        self.vm.stop(0)

    def _stop_reply(self) -> bytes:
        vcpu, stop = self.last_stop
        reply = b"T%02xthread:%x;" % (stop.signal, vcpu + 1)
        if stop.reason:
            addr = b"%x" % stop.addr if stop.reason.endswith("watch") else b""
            reply += stop.reason.encode() + b":" + addr + b";"
        return reply

    # Queries and settings.
    def _query(self, args: bytes) -> bytes:
        name, _, rest = args.partition(b":")
        if name == b"Supported":
            return (b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;"
                    b"QStartNoAckMode+;vContSupported+" % MAX_PACKET)
        if name == b"Xfer" and rest.startswith(b"features:read:"):
            annex, _, span = rest[len(b"features:read:"):].partition(b":")
            text = self.target.features.get(annex.decode(errors="replace"))
            if text is None:
                return b"E00"
            off, length = (_hex_int(x) for x in span.split(b","))
            part = text[off:off + min(length, MAX_PACKET // 2)]
            return (b"m" if off + len(part) < len(text) else b"l") + part
        if args == b"fThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in sorted(self.all))
        if args == b"sThreadInfo":
            return b"l"
        if args == b"C":
            return b"QC%x" % (self.current + 1)
        if args == b"Attached":
            return b"1"
        if args.startswith(b"ThreadExtraInfo,"):
            vcpu = self._vcpu_of(args.partition(b",")[2])
            return f"vCPU {vcpu}".encode().hex().encode() if vcpu is not None else ERROR_ARGS
        return b""

    def _set(self, args: bytes) -> bytes:
        if args == b"StartNoAckMode":
            self._send(b"OK")
            self.client.acks = False
            return None
        return b""

    def _vcpu_of(self, text: bytes) -> int | None:
        tid = _thread_id(text)
        return tid - 1 if tid - 1 in self.all else None

    def _select_thread(self, args: bytes) -> bytes:
        tid = _thread_id(args[1:])
        if tid in (0, -1):
            return b"OK"
        if tid - 1 not in self.all:
            return ERROR_ARGS
        if args[:1] == b"g":
            self.current = tid - 1
        return b"OK"

    def _v(self, args: bytes) -> bytes | None:
        if args == b"Cont?":
            return b"vCont;c;C;s;S"
        if args.startswith(b"Cont;"):
            # A step runs its vCPU alone; the others stay stopped.
            step = None
            for action in args[5:].split(b";"):
                kind, _, tid = action.partition(b":")
                if kind[:1] in b"sS":
                    step = self._vcpu_of(tid) if tid else self.current
                    if step is None:
                        return ERROR_ARGS
            return self._resume(step, b"")
        if args == b"Kill" or args.startswith(b"Kill;"):
            self._send(b"OK")
            return self._kill(b"")
        return b""

    # Registers.
    def _vcpu(self) -> object:
        return self.vm.vcpus[self.current]

    def _read_registers(self, _: bytes) -> bytes:
        return b"".join(self.target.read_registers(self._vcpu())).hex().encode()

    def _write_registers(self, args: bytes) -> bytes:
        data = bytes.fromhex(args.decode())
        old = self.target.read_registers(self._vcpu())
        at = 0
        for number, value in enumerate(old):
            new = data[at:at + len(value)]
            at += len(value)
            if len(new) == len(value) and new != value:
                self.target.write_register(self._vcpu(), number, new)
        return b"OK"

    def _read_register(self, args: bytes) -> bytes:
        number = _hex_int(args)
        regs = self.target.read_registers(self._vcpu())
        return regs[number].hex().encode() if number < len(regs) else ERROR_ARGS

    def _write_register(self, args: bytes) -> bytes:
        number, _, value = args.partition(b"=")
        n, data = _hex_int(number), bytes.fromhex(value.decode())
        if n >= len(self.target.sizes) or len(data) != self.target.sizes[n]:
            return ERROR_ARGS
        self.target.write_register(self._vcpu(), n, data)
        return b"OK"

    # Memory, at guest virtual addresses.
    def _span(self, addr: int, length: int) -> list[tuple[int, int, int]]:
        """(virtual, physical, length) pieces of a range, one per page, up
        to the first that is not mapped."""
        pieces = []
        while length > 0:
            n = min(length, PAGE - addr % PAGE)
            gpa = self.target.translate(self._vcpu(), addr)
            if gpa is None or not self.vm.mem.contains(gpa, n):
                break
            pieces.append((addr, gpa, n))
            addr, length = (addr + n) & (1 << 64) - 1, length - n
        return pieces

    def _read_memory(self, args: bytes) -> bytes:
        addr, length = (_hex_int(x) for x in args.split(b","))
        data = bytearray()
        for _, gpa, n in self._span(addr, min(length, MAX_PACKET // 2 - 8)):
            data += self.vm.mem.read(gpa, n)
        # gdb sees the guest's own bytes, not the traps planted for it.
        for at, (_, original) in self.sw.items():
            if addr <= at < addr + len(data):
                data[at - addr:at - addr + len(original)] = original
        return data.hex().encode() if data else ERROR_MEMORY

    def _write_memory(self, args: bytes) -> bytes:
        where, _, value = args.partition(b":")
        addr, length = (_hex_int(x) for x in where.split(b","))
        data = bytes.fromhex(value.decode())
        if len(data) != length:
            return ERROR_ARGS
        pieces = self._span(addr, length)
        if sum(n for _, _, n in pieces) != length:
            return ERROR_MEMORY
        for virt, gpa, n in pieces:
            self.vm.mem.write(gpa, data[virt - addr:virt - addr + n])
        return b"OK"

    # Breakpoints and watchpoints.
    def _point(self, args: bytes) -> tuple[int, int, int]:
        kind, addr, size = args.split(b";")[0].split(b",")
        return int(kind), _hex_int(addr), _hex_int(size)

    def _insert(self, args: bytes) -> bytes:
        kind, addr, size = self._point(args)
        if kind == 0:
            if addr in self.sw:
                return b"OK"
            trap = self.target.BREAKPOINT
            pieces = self._span(addr, len(trap))
            if len(pieces) != 1:
                return ERROR_MEMORY
            gpa = pieces[0][1]
            self.sw[addr] = (gpa, self.vm.mem.read(gpa, len(trap)))
            self.vm.mem.write(gpa, trap)
            return b"OK"
        point = HwPoint(Watch(kind), addr, size)
        if point in self.hw:
            return b"OK"
        if len(self.hw) == self.target.HW_SLOTS:
            return ERROR_FULL
        try:
            self.target.set_debug(self._vcpu(), False, bool(self.sw), self.hw + [point])
        except ValueError:
            return ERROR_ARGS
        self.hw.append(point)
        return b"OK"

    def _remove(self, args: bytes) -> bytes:
        kind, addr, size = self._point(args)
        if kind == 0:
            self._remove_sw(addr)
        elif HwPoint(Watch(kind), addr, size) in self.hw:
            self.hw.remove(HwPoint(Watch(kind), addr, size))
        return b"OK"

    def _remove_sw(self, addr: int) -> None:
        gpa, original = self.sw.pop(addr, (None, b""))
        if gpa is not None:
            try:
                self.vm.mem.write(gpa, original)
            except GuestError:
                pass
