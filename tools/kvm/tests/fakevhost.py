"""A vhost kernel that records what lkvm tells it, and a transport whose
doorbells are eventfds, for testing the vhost back ends without
/dev/vhost-*: the `vhost_kernel` fixture (tests/conftest.py) puts the
fake in place of virtio/vhost.py's ioctl."""

import os

from include.uapi import ffi, lib
from kvm.iothread import IoThread
from virtio.device import VirtioDevice
from virtio.mock import Driver, MockTransport

# Every VHOST_* request by its number, to record calls by name.
NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("VHOST_")}


class FakeVhostKernel:
    FEATURES = (1 << lib.VIRTIO_F_VERSION_1 | 1 << lib.VIRTIO_RING_F_EVENT_IDX |
                1 << lib.VIRTIO_RING_F_INDIRECT_DESC)

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: dict[str, int] = {}    # request name -> the errno it fails with

    def __call__(self, fd: int, request: int, arg: object) -> int:
        name = NAMES[request]
        if name in self.refuse:
            raise OSError(self.refuse[name], os.strerror(self.refuse[name]))
        if name == "VHOST_GET_FEATURES":
            arg[0] = self.FEATURES
        elif name in ("VHOST_SET_FEATURES", "VHOST_VSOCK_SET_GUEST_CID",
                      "VHOST_VSOCK_SET_RUNNING"):
            self.calls.append((name, arg[0]))
        elif name in ("VHOST_SCSI_SET_ENDPOINT", "VHOST_SCSI_CLEAR_ENDPOINT"):
            wwpn = ffi.string(arg.vhost_wwpn).decode()
            self.calls.append((name, arg.abi_version, wwpn, arg.vhost_tpgt))
        elif name == "VHOST_SET_MEM_TABLE":
            self.calls.append((name, [(arg.regions[i].guest_phys_addr, arg.regions[i].memory_size,
                                       arg.regions[i].userspace_addr)
                                      for i in range(arg.nregions)]))
        elif name == "VHOST_SET_VRING_ADDR":
            self.calls.append((name, arg.index, arg.desc_user_addr, arg.avail_user_addr,
                               arg.used_user_addr))
        elif name in ("VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL"):
            self.calls.append((name, arg.index, arg.fd))
        elif name in ("VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE"):
            self.calls.append((name, arg.index, arg.num))
        else:
            self.calls.append((name,))
        return 0


class KickTransport(MockTransport):
    """Doorbells as eventfds, an I/O thread that is not running (calls
    run at once) and no irqfd: vhost's calls come to lkvm."""
    def __init__(self, queues: int = 3) -> None:
        super().__init__()
        self.kicks = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(queues)]
        self.iothread = IoThread("vhost", print)
        for q, fd in enumerate(self.kicks):
            self.iothread.add(fd, lambda q=q: None)

    def queue_irqfd(self, index: int) -> None:
        return None

    def close(self) -> None:
        self.iothread.join(0)
        for fd in self.kicks:
            os.close(fd)


def driven(dev: VirtioDevice) -> tuple[Driver, KickTransport]:
    """A mock driver for vhost back end `dev`, on a KickTransport whose
    I/O thread the device takes its kicks from."""
    drv = Driver(dev)
    transport = drv.transport = dev.transport = KickTransport()
    dev.serve_on(transport.iothread)
    return drv, transport
