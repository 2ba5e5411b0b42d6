"""vhost=1: a queue pair's rings served by the host kernel's vhost-net
worker instead of lkvm's I/O thread, frames going straight between the
guest's buffers and the tap.

One /dev/vhost-net instance per queue pair (virtio/vhost.py does the
hand-over, as for vhost-vsock).  Beside the pair's doorbells it takes
the tap from the I/O thread: the tap's vnet header grows to the driver's
header size, which vhost-net leaves to the tap, and
VHOST_NET_SET_BACKEND starts the worker.  A reset takes the tap back
(VHOST_NET_SET_BACKEND with -1, which waits for the worker) before the
I/O thread gets its fds back; the control queue is always lkvm's.
"""

import os
from collections.abc import Callable

from include.uapi import lib
from virtio.vhost import Irqfd, Poller, Ring, Vhost

VHOST_NET = "/dev/vhost-net"
RX, TX = 0, 1          # a vhost-net instance's rings (the kernel's VHOST_NET_VQ_*)
# Features vhost-net itself must implement for lkvm to offer them: the
# ring's and the header's; the offloads are the tap's.
VHOST_FEATURES = (1 << lib.VIRTIO_RING_F_INDIRECT_DESC | 1 << lib.VIRTIO_RING_F_EVENT_IDX |
                  1 << lib.VIRTIO_F_VERSION_1 | 1 << lib.VIRTIO_NET_F_MRG_RXBUF)


def available() -> bool:
    return os.path.exists(VHOST_NET)


class VhostNet(Vhost):
    def __init__(self, mem: object, what: str) -> None:
        super().__init__(VHOST_NET, what, mem, 2)
        self.features &= VHOST_FEATURES

    def start(self, poller: Poller, features: int, rings: tuple[Ring, Ring],
              kicks: tuple[int, int], tap: int, interrupt: Callable[[int], None],
              irqfd: Irqfd) -> None:
        """On the I/O thread: the pair's rings (receive, transmit) and the
        tap to vhost."""
        super().start(poller, features, rings, kicks, interrupt, irqfd, taken=(tap,))
        for i in (RX, TX):
            self.vring(lib.VHOST_NET_SET_BACKEND, "vhost_vring_file", index=i, fd=tap)

    def stop(self, poller: Poller) -> None:
        if self.running:
            for i in (RX, TX):
                self.vring(lib.VHOST_NET_SET_BACKEND, "vhost_vring_file", index=i, fd=-1)
        super().stop(poller)
