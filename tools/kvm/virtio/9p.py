"""virtio-9p: a host directory shared with the guest under a mount tag
(mount -t 9p -o trans=virtio TAG /mnt).  A request's device-readable
buffers, joined, are one T-message for the 9P2000.L server; its reply is
written into the device-writable buffers.  The server takes the buffers
themselves, so file data moves between them and the file without a copy
in Python, and copies no more of a request than msize: the buffers may
name all of the guest's RAM, many times over."""

import os

from include.uapi import ffi, lib
from kvm.errors import LkvmError
from virtio.device import VirtioDevice
from virtio.p9 import Server
from virtio.queue import Virtqueue

DEFAULT_TAG = "kvm_9p"   # kvmtool's tag when none is given
MAX_TAG_LEN = 32         # kvmtool's limit
TAG_LEN = ffi.sizeof("struct virtio_9p_config")  # the u16 before the tag bytes


class P9(VirtioDevice):
    device_id = lib.VIRTIO_ID_9P
    name = "9p"
    features = 1 << lib.VIRTIO_9P_MOUNT_TAG
    queue_size = 128

    def __init__(self, mem: object, root: str, tag: str = DEFAULT_TAG,
                 readonly: bool = False) -> None:
        super().__init__(mem)
        if not os.path.isdir(root):
            raise LkvmError(f"--9p {root}: not a directory")
        raw = tag.encode()
        if not raw or len(raw) > MAX_TAG_LEN:
            raise LkvmError(f"--9p tag {tag!r}: 1 to {MAX_TAG_LEN} bytes")
        self.config = bytearray(len(raw).to_bytes(TAG_LEN, "little") + raw)
        self.server = Server(root, readonly)

    def process(self, index: int, queue: Virtqueue) -> None:
        serve = self.server.serve
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, serve(chain.readable, chain.writable))

    def close(self) -> None:
        self.server.close()
