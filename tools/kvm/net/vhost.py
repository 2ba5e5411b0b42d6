"""vhost=1: a queue pair's rings served by the host kernel's vhost-net
worker instead of lkvm's I/O thread, frames going straight between the
guest's buffers and the tap.

One /dev/vhost-net instance per queue pair, owned by lkvm from the start
(VHOST_SET_OWNER) and told the guest's memory (VHOST_SET_MEM_TABLE: each
RAM region's guest address, size and where lkvm maps it).  When the
driver sets DRIVER_OK the pair's rings are handed over: their size,
where the driver starts (the device's next available index), their
addresses in lkvm's mapping, the queue's doorbell ioeventfd as the kick
(taken out of the I/O thread's poll set while vhost owns it), and an
eventfd of lkvm's as the call, which the I/O thread turns into the
queue's interrupt on whatever the transport uses (MSI-X or INTx).  Then
the tap: its vnet header grows to the driver's header size, which
vhost-net leaves to the tap, and VHOST_NET_SET_BACKEND starts the worker.

A reset takes the tap back (VHOST_NET_SET_BACKEND with -1) and gives the
doorbells back to the I/O thread; the control queue is always lkvm's.
"""

import os
from collections.abc import Callable
from typing import Protocol

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from virtio.vhost import host_address, memory_table

VHOST_NET = "/dev/vhost-net"
RX, TX = 0, 1          # a vhost-net instance's rings (the kernel's VHOST_NET_VQ_*)
# Features vhost-net itself must implement for lkvm to offer them: the
# ring's and the header's; the offloads are the tap's.
VHOST_FEATURES = (1 << lib.VIRTIO_RING_F_INDIRECT_DESC | 1 << lib.VIRTIO_RING_F_EVENT_IDX |
                  1 << lib.VIRTIO_F_VERSION_1 | 1 << lib.VIRTIO_NET_F_MRG_RXBUF)


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


def available() -> bool:
    return os.path.exists(VHOST_NET)


class VhostNet:
    def __init__(self, mem: object, what: str) -> None:
        self.mem = mem
        try:
            self.fd = os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise LkvmError(f"{what}: cannot open {VHOST_NET}: {e.strerror}") from None
        self.calls = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in (RX, TX)]
        self.taken: list[tuple[int, tuple]] = []    # fds vhost reads, their I/O thread handlers
        self.running = False
        try:
            ioctl(self.fd, lib.VHOST_SET_OWNER)
            features = ffi.new("uint64_t *")
            ioctl(self.fd, lib.VHOST_GET_FEATURES, features)
            self.features = features[0] & VHOST_FEATURES
            self.set_mem_table()
        except OSError as e:
            self.close()
            raise LkvmError(f"{what}: {VHOST_NET}: {e.strerror}") from None

    def set_mem_table(self) -> None:
        ioctl(self.fd, lib.VHOST_SET_MEM_TABLE, memory_table(self.mem))

    def _vring(self, request: int, ctype: str, **fields: int) -> None:
        ioctl(self.fd, request, ffi.new(f"struct {ctype} *", fields))

    def start(self, features: int, rings: tuple[Ring, Ring], kicks: tuple[int, int],
              tap: int, poller: Poller, interrupt: Callable[[int], None]) -> None:
        """Hand the pair's rings (receive, transmit) and the tap to vhost;
        `interrupt(i)` raises ring i's interrupt.  OSError if vhost
        refuses: stop() then gives back what was taken."""
        ioctl(self.fd, lib.VHOST_SET_FEATURES, ffi.new("uint64_t *", features & self.features))
        self._take(poller, tap)
        for i, (ring, kick) in enumerate(zip(rings, kicks, strict=True)):
            self._vring(lib.VHOST_SET_VRING_NUM, "vhost_vring_state", index=i, num=ring.size)
            self._vring(lib.VHOST_SET_VRING_BASE, "vhost_vring_state", index=i,
                        num=ring.last_avail)
            desc, avail, used = (host_address(self.mem, a, 1) for a in
                                 (ring.desc_addr, ring.avail_addr, ring.used_addr))
            self._vring(lib.VHOST_SET_VRING_ADDR, "vhost_vring_addr", index=i,
                        desc_user_addr=desc, avail_user_addr=avail, used_user_addr=used)
            self._take(poller, kick)
            self._vring(lib.VHOST_SET_VRING_KICK, "vhost_vring_file", index=i, fd=kick)
            self._vring(lib.VHOST_SET_VRING_CALL, "vhost_vring_file", index=i,
                        fd=self.calls[i])
            poller.add(self.calls[i], lambda i=i: interrupt(i))
        for i in (RX, TX):
            self._vring(lib.VHOST_NET_SET_BACKEND, "vhost_vring_file", index=i, fd=tap)
        self.running = True

    def _take(self, poller: Poller, fd: int) -> None:
        """vhost reads `fd` from now on, not the I/O thread."""
        self.taken.append((fd, poller.handlers[fd]))
        poller.remove(fd)

    def stop(self, poller: Poller) -> None:
        """Take the tap and the doorbells back for the I/O thread."""
        if self.running:
            for i in (RX, TX):
                self._vring(lib.VHOST_NET_SET_BACKEND, "vhost_vring_file", index=i, fd=-1)
                # Nor polling the doorbells the I/O thread takes back.
                self._vring(lib.VHOST_SET_VRING_KICK, "vhost_vring_file", index=i, fd=-1)
                self._vring(lib.VHOST_SET_VRING_CALL, "vhost_vring_file", index=i, fd=-1)
            self.running = False
        for call in self.calls:
            if call in poller.handlers:
                poller.remove(call)
        for kick, (callback, counter) in self.taken:
            poller.add(kick, callback, counter)
        self.taken.clear()

    def close(self) -> None:
        for fd in (self.fd, *self.calls):
            os.close(fd)
        self.fd, self.calls = -1, []
