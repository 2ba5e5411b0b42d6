"""A vhost device (linux/vhost.h): the kernel serves some of a virtio
device's queues in guest memory directly.  lkvm owns the device, hands
the kernel the memory table and, per queue, its rings (as host
addresses), the ioeventfd the guest's notifications signal (kick) and
an eventfd the kernel signals when the driver is to be interrupted
(call).  The call eventfd is read by the device's I/O thread, which
raises the interrupt through the transport: that works the same on
every transport (MSI-X, INTx's status latch, MMIO's), at one host
wake-up per interrupt.
"""

import os
from collections.abc import Callable

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from kvm.ioctl import ioctl
from virtio.queue import ring_sizes

Ioctl = Callable[[int, int, object], int]


class Vhost:
    def __init__(self, path: str, do_ioctl: Ioctl = ioctl, fd: int | None = None) -> None:
        """Open `path` (or take `fd`), become its owner and read what
        the kernel offers."""
        self.path, self.ioctl = path, do_ioctl
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC) if fd is None else fd
        except OSError as e:
            raise LkvmError(f"cannot open {path}: {e.strerror}") from None
        try:
            self.ioctl(self.fd, lib.VHOST_SET_OWNER, 0)
            features = ffi.new("uint64_t *")
            self.ioctl(self.fd, lib.VHOST_GET_FEATURES, features)
        except OSError as e:
            os.close(self.fd)
            raise LkvmError(f"{path}: {e.strerror}") from None
        self.features = features[0]

    def set_u64(self, request: int, value: int) -> None:
        self.ioctl(self.fd, request, ffi.new("uint64_t *", value))

    def start(self, mem: object, features: int, queues: dict[int, object],
              kicks: dict[int, int], calls: dict[int, int]) -> None:
        """Hand the kernel the negotiated features, guest RAM and the
        `queues` (index -> Virtqueue) with their kick and call eventfds.
        OSError if the kernel refuses any of it."""
        self.set_u64(lib.VHOST_SET_FEATURES, features)
        self.ioctl(self.fd, lib.VHOST_SET_MEM_TABLE, memory_table(mem))
        for index, q in queues.items():
            self.ioctl(self.fd, lib.VHOST_SET_VRING_NUM,
                       ffi.new("struct vhost_vring_state *", {"index": index, "num": q.size}))
            self.ioctl(self.fd, lib.VHOST_SET_VRING_BASE,
                       ffi.new("struct vhost_vring_state *", {"index": index, "num": 0}))
            self.ioctl(self.fd, lib.VHOST_SET_VRING_ADDR, vring_addr(mem, index, q))
            for request, efd in ((lib.VHOST_SET_VRING_KICK, kicks[index]),
                                 (lib.VHOST_SET_VRING_CALL, calls[index])):
                self.ioctl(self.fd, request,
                           ffi.new("struct vhost_vring_file *", {"index": index, "fd": efd}))

    def close(self) -> None:
        os.close(self.fd)


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


def vring_addr(mem: object, index: int, q: object) -> object:
    desc, avail, used = ring_sizes(q.size)
    return ffi.new("struct vhost_vring_addr *", {
        "index": index,
        "desc_user_addr": host_address(mem, q.desc_addr, desc),
        "avail_user_addr": host_address(mem, q.avail_addr, avail),
        "used_user_addr": host_address(mem, q.used_addr, used)})
