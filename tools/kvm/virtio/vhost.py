"""A vhost device (linux/vhost.h): the kernel serves some of a virtio
device's queues in guest memory directly.  lkvm owns the device from the
start (VHOST_SET_OWNER) and tells it the guest's memory (each RAM
region's guest address, size and where lkvm maps it).  When the driver
is ready the rings are handed over: their size, where the driver starts
(the device's next available index), their addresses in lkvm's mapping,
the queue's doorbell ioeventfd as the kick and, as the call, the eventfd
that raises the queue's interrupt.

The hand-over runs on the device's I/O thread (IoThread.call), between
two of its handlers: the fds vhost takes (the kicks, a back end's) leave
the I/O thread's poll set there, so no handler of lkvm's is half way
through a ring, or has taken a kick's count without acting on it yet,
when vhost reads the ring base.  A count left in a kick is vhost's to
see.  Stopping is the reverse: the device stops the kernel's worker
(which waits for it) before the I/O thread gets the fds back.

The call: where the transport's interrupt for the queue is an irqfd the
guest's interrupt controller can take as it is (an MSI-X vector, routed
through the VM's GSI routing), vhost signals that irqfd itself and the
interrupt never passes through lkvm.  Otherwise (MSI-X off, the vector
masked, INTx's or MMIO's status latch, which lkvm keeps) vhost signals
an eventfd of lkvm's whose handler raises the interrupt as lkvm's own
queues do.  A guest masking, unmasking or moving a vector re-routes the
call (reroute()).
"""

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from include.uapi import ffi, lib
from kvm.errors import GuestError, LkvmError
from kvm.ioctl import ioctl
from virtio.queue import ring_sizes


class Ring(Protocol):
    """What vhost needs of a device's virtqueue."""
    size: int
    last_avail: int
    desc_addr: int
    avail_addr: int
    used_addr: int


class Poller(Protocol):
    """The device's I/O thread, as far as vhost takes fds from it."""
    handlers: dict

    def add(self, fd: int, callback: Callable[[], None], counter: bool = True) -> None: ...

    def remove(self, fd: int) -> None: ...

    def call(self, fn: Callable[[], None]) -> None: ...


# A ring's interrupt as an irqfd the kernel raises it through, or None
# where only lkvm can raise it.
Irqfd = Callable[[int], int | None]


class Vhost:
    def __init__(self, path: str, what: str, mem: object, rings: int) -> None:
        """Open `path`, become its owner, read what it offers and give it
        the guest's memory; `rings` is how many rings it will serve."""
        self.path, self.mem = path, mem
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise LkvmError(f"{what}: cannot open {path}: {e.strerror}") from None
        # lkvm's own call for each ring, read by the I/O thread.
        self.fallback = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(rings)]
        self.calls: dict[int, int] = {}         # ring -> the fd vhost signals now
        self.irqfd: Irqfd = lambda i: None
        self.taken: list[tuple[int, tuple]] = []    # fds vhost reads, their I/O thread handlers
        self.running = False
        try:
            self.ioctl(lib.VHOST_SET_OWNER, 0)
            features = ffi.new("uint64_t *")
            self.ioctl(lib.VHOST_GET_FEATURES, features)
            self.features = features[0]
            self.ioctl(lib.VHOST_SET_MEM_TABLE, memory_table(mem))
        except OSError as e:
            self.close()
            raise LkvmError(f"{what}: {path}: {e.strerror}") from None

    def ioctl(self, request: int, arg: object = 0) -> None:
        ioctl(self.fd, request, arg)

    def set_u64(self, request: int, value: int) -> None:
        self.ioctl(request, ffi.new("uint64_t *", value))

    def vring(self, request: int, ctype: str, **fields: int) -> None:
        self.ioctl(request, ffi.new(f"struct {ctype} *", fields))

    def start(self, poller: Poller, features: int, rings: Sequence[Ring], kicks: Sequence[int],
              interrupt: Callable[[int], None], irqfd: Irqfd, taken: Sequence[int] = ()) -> None:
        """On the I/O thread (poller.call): hand vhost `rings` (vhost's ring
        i is rings[i]) with their doorbells `kicks`, and take `taken` (a
        back end's fds) from the I/O thread too.  `interrupt(i)` raises
        ring i's interrupt in lkvm, `irqfd(i)` gives the irqfd that raises
        it in the kernel, if there is one.  OSError if vhost refuses:
        stop() then gives back what was taken."""
        for fd in (*kicks, *taken):
            self.taken.append((fd, poller.handlers[fd]))
            poller.remove(fd)
        self.running = True
        self.set_u64(lib.VHOST_SET_FEATURES, features & self.features)
        for i, (ring, kick) in enumerate(zip(rings, kicks, strict=True)):
            self.vring(lib.VHOST_SET_VRING_NUM, "vhost_vring_state", index=i, num=ring.size)
            self.vring(lib.VHOST_SET_VRING_BASE, "vhost_vring_state", index=i,
                       num=ring.last_avail)
            self.ioctl(lib.VHOST_SET_VRING_ADDR, vring_addr(self.mem, i, ring))
            self.vring(lib.VHOST_SET_VRING_KICK, "vhost_vring_file", index=i, fd=kick)
            poller.add(self.fallback[i], lambda i=i: interrupt(i))
        self.irqfd = irqfd
        self.reroute()

    def reroute(self) -> None:
        """Point each ring's call where its interrupt goes now."""
        if not self.running:
            return
        for i, fallback in enumerate(self.fallback):
            fd = self.irqfd(i)
            fd = fallback if fd is None else fd
            if self.calls.get(i) != fd:
                self.vring(lib.VHOST_SET_VRING_CALL, "vhost_vring_file", index=i, fd=fd)
                self.calls[i] = fd

    def stop(self, poller: Poller) -> None:
        """Give the doorbells and the taken fds back to the I/O thread; the
        device has stopped vhost's worker first."""
        if self.running:
            for i in range(len(self.fallback)):
                for request in (lib.VHOST_SET_VRING_KICK, lib.VHOST_SET_VRING_CALL):
                    self.vring(request, "vhost_vring_file", index=i, fd=-1)
            self.running = False
        self.calls.clear()
        for fd in self.fallback:
            if fd in poller.handlers:
                poller.remove(fd)
        for fd, (callback, counter) in self.taken:
            poller.add(fd, callback, counter)
        self.taken.clear()

    def close(self) -> None:
        for fd in (self.fd, *self.fallback):
            os.close(fd)
        self.fd, self.fallback = -1, []


class Handover:
    """Mixed into a VirtioDevice whose first `vhost_rings` queues the kernel
    serves (vhost's ring i is the device's queue i) once the driver is
    ready, until it resets the device.  The device says how its vhost
    starts and stops serving after the rings are handed over
    (vhost_serve)."""
    vhost: Vhost
    vhost_rings: int
    iothread: Poller | None = None      # the device's, to take the kicks from

    def vhost_serve(self, on: bool) -> None:
        """Start (after the hand-over) or stop (before the take-back) the
        kernel's worker: OSError if it refuses."""
        raise NotImplementedError

    def serve_on(self, iothread: Poller) -> None:
        self.iothread = iothread

    def offered(self) -> int:
        return super().offered() & self.vhost.features

    def set_status(self, value: int) -> None:
        with self.lock:
            go = value & ~self.status & lib.VIRTIO_CONFIG_S_DRIVER_OK
            super().set_status(value)
            if go:
                self.iothread.call(self._start_vhost)

    def _start_vhost(self) -> None:
        """On the I/O thread, unless the driver reset the device since."""
        with self.lock:
            if not self.status & lib.VIRTIO_CONFIG_S_DRIVER_OK or self.broken or \
                    self.vhost.running:
                return
            queues = self.queues[:self.vhost_rings]
            if not all(q.enabled for q in queues):
                self.fail("driver ready before the queues vhost serves")
                return
            t = self.transport
            kicks = t.kicks[:self.vhost_rings]
            try:
                self.vhost.start(self.iothread, self.driver_features, queues, kicks,
                                 t.signal_queue, t.queue_irqfd)
                self.vhost_serve(True)
            except (OSError, GuestError) as e:
                self.vhost.stop(self.iothread)
                self.fail(f"{self.vhost.path}: {reason(e)}")
                return
            # The driver goes on after DRIVER_OK: its first requests may
            # be in the rings already, their kicks taken by the I/O
            # thread before this ran.  vhost looks only when kicked.
            for kick in kicks:
                os.eventfd_write(kick, 1)

    def on_reset(self) -> None:
        if self.vhost.running:
            self.vhost_serve(False)
            self.vhost.stop(self.iothread)

    def interrupts_moved(self) -> None:
        with self.lock:
            self.vhost.reroute()

    def close(self) -> None:
        self.vhost.close()


def reason(e: Exception) -> str:
    """Why start() failed, in a line: the kernel's refusal or the guest's
    ring outside RAM."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def host_address(mem: object, gpa: int, length: int) -> int:
    """Where guest range gpa+length is in lkvm's address space; GuestError
    unless it is all RAM."""
    r = mem.region(gpa, length)
    return r.host + gpa - r.gpa


def memory_table(mem: object) -> object:
    """struct vhost_memory of every RAM region, as KVM's memory slots."""
    return ffi.new("struct vhost_memory *", {
        "nregions": len(mem.regions),
        "regions": [{"guest_phys_addr": r.gpa, "memory_size": r.size, "userspace_addr": r.host}
                    for r in mem.regions]})


def vring_addr(mem: object, index: int, q: Ring) -> object:
    desc, avail, used = ring_sizes(q.size)
    return ffi.new("struct vhost_vring_addr *", {
        "index": index,
        "desc_user_addr": host_address(mem, q.desc_addr, desc),
        "avail_user_addr": host_address(mem, q.avail_addr, avail),
        "used_user_addr": host_address(mem, q.used_addr, used)})
