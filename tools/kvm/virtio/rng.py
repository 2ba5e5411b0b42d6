"""virtio-rng: the guest's /dev/hwrng, filled from the host's urandom."""

import os

from include.uapi import lib
from virtio.device import VirtioDevice
from virtio.queue import Virtqueue


class Rng(VirtioDevice):
    device_id = lib.VIRTIO_ID_RNG
    name = "rng"

    def __init__(self, mem: object) -> None:
        super().__init__(mem)
        self.urandom = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)

    def process(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            # Straight into guest memory; urandom never reads short.
            n = os.readv(self.urandom, chain.writable) if chain.writable else 0
            queue.push(chain.head, n)

    def close(self) -> None:
        os.close(self.urandom)
