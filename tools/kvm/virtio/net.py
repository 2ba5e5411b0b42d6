"""virtio-net (virtio 1.x §5.1): one receive and one transmit queue, the
MAC and link status in config space, mergeable receive buffers.

Every frame carries a virtio_net_hdr in front.  No offload is offered
yet (the user-mode back end takes plain frames), so a transmitted
header must ask for none.  A transmit chain is read up to the largest
frame and no further; a bad one (device-writable, empty, oversized) is
dropped and given back, as a wire drops a bad frame.

Received frames wait in a bounded list for the guest's buffers.  With
VIRTIO_NET_F_MRG_RXBUF a frame spans as many chains as it needs,
num_buffers in the first header saying how many; without it, one chain
must hold it whole, or the frame is dropped (the chain stays posted).
A frame the mergeable buffers posted so far cannot hold puts the chains
taken back on the ring and waits for the next receive kick.  A receive
chain with no device-writable buffer breaks the queue rules: the device
stops until reset.

When the back end dies the link goes down (VIRTIO_NET_S_LINK_UP clears
and the driver gets a config interrupt), lkvm says why once and keeps
running; frames sent after that are dropped.  The back end is closed
then, which also takes its fd out of the I/O thread's epoll set.
"""

from collections import deque

from include.uapi import ffi, lib
from kvm import msg
from kvm.cstruct import packer, to_bytes
from net.backend import MAX_FRAME, Backend, LinkDown
from virtio.device import VirtioDevice
from virtio.iov import prefix, scatter, total
from virtio.queue import Chain, QueueError, Virtqueue

RX, TX = 0, 1
HDR = packer("struct virtio_net_hdr")                   # legacy, without num_buffers
# Modern or mergeable: virtio_net_hdr_mrg_rxbuf laid out flat, as virtio 1.x names it.
HDR_MRG = packer("struct virtio_net_hdr_v1")
STATUS_OFFSET = ffi.offsetof("struct virtio_net_config", "status")
PENDING_FRAMES = 256   # received frames kept while the guest posts no buffers


class Net(VirtioDevice):
    device_id = lib.VIRTIO_ID_NET
    name = "net"
    num_queues = 2
    features = (1 << lib.VIRTIO_NET_F_MAC | 1 << lib.VIRTIO_NET_F_STATUS |
                1 << lib.VIRTIO_NET_F_MRG_RXBUF)

    def __init__(self, mem: object, backend: Backend, mac: bytes) -> None:
        super().__init__(mem)
        self.backend = backend
        self.link_up = True
        self.pending: deque[bytes] = deque()
        self.dropped = 0        # frames lost: bad transmits, nowhere to receive
        self.hdr = HDR_MRG
        self.mergeable = False
        self.config = bytearray(to_bytes("struct virtio_net_config", mac=list(mac),
                                         status=lib.VIRTIO_NET_S_LINK_UP,
                                         max_virtqueue_pairs=1))

    def negotiated(self, features: int) -> None:
        # The header has num_buffers unless a legacy driver left out
        # mergeable buffers (virtio 1.x §5.1.6).
        modern = features >> lib.VIRTIO_F_VERSION_1 & 1
        self.mergeable = bool(features >> lib.VIRTIO_NET_F_MRG_RXBUF & 1)
        self.hdr = HDR_MRG if modern or self.mergeable else HDR

    def on_reset(self) -> None:
        self.pending.clear()
        self.mergeable = False
        self.hdr = HDR_MRG

    def process(self, index: int, queue: Virtqueue) -> None:
        if index == TX:
            self._transmit(queue)
        else:
            self._fill(queue)

    # Transmit.
    def _transmit(self, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            frame = self._frame(chain)
            if frame is None:
                self.dropped += 1
            elif self.link_up:
                try:
                    self.backend.send(frame)
                except LinkDown as e:
                    self._link_down(str(e))
            queue.push(chain.head, 0)

    def _frame(self, chain: Chain) -> bytes | None:
        """The Ethernet frame a transmit chain holds, or None if it is no
        good: the header must ask for no offload we did not offer."""
        size = total(chain.readable)
        if chain.writable or not self.hdr.size < size <= self.hdr.size + MAX_FRAME:
            return None
        data = prefix(chain.readable, size)
        flags, gso_type = HDR.unpack_from(data)[:2]
        if flags & lib.VIRTIO_NET_HDR_F_NEEDS_CSUM or gso_type != lib.VIRTIO_NET_HDR_GSO_NONE:
            return None
        return data[self.hdr.size:]

    # Receive.
    def receive(self) -> None:
        """The back end's fd polled readable (on the device's I/O thread)."""
        with self.lock:
            if not self.link_up:
                return
            try:
                frames = self.backend.recv()
            except LinkDown as e:
                self._link_down(str(e))
                return
            room = PENDING_FRAMES - len(self.pending)
            self.dropped += max(len(frames) - room, 0)
            self.pending.extend(frames[:room])
        self.notify(RX)

    def _fill(self, queue: Virtqueue) -> None:
        while self.pending and self._place(queue, self.pending[0]):
            self.pending.popleft()

    def _place(self, queue: Virtqueue, frame: bytes) -> bool:
        """Put one frame in the guest's receive buffers (or drop it);
        False, with the ring as it was, to wait for more buffers."""
        need = self.hdr.size + len(frame)
        chains: list[Chain] = []
        room = 0
        while room < need and (self.mergeable or not chains):
            chain = queue.pop()
            if chain is None:
                break
            if not chain.writable:
                raise QueueError("receive buffer the device cannot write")
            chains.append(chain)
            room += total(chain.writable)
        if room < need:
            queue.rewind(len(chains))
            if self.mergeable or not chains:
                return False    # wait for more buffers
            self.dropped += 1   # too big for any one buffer this guest posts
            return True
        header = bytes(self.hdr.pack(0, 0, 0, 0, 0, 0, *([len(chains)] if self.hdr is HDR_MRG
                                                           else [])))
        data = memoryview(header + frame)
        for chain in chains:
            n = scatter(chain.writable, data)
            data = data[n:]
            queue.push(chain.head, n)
        return True

    # The link.
    def _link_down(self, why: str) -> None:
        msg.warning(f"virtio-net: {why}; the guest's link is down")
        self.link_up = False
        self.pending.clear()
        self.backend.close()
        self.config[STATUS_OFFSET] &= ~lib.VIRTIO_NET_S_LINK_UP & 0xFF
        if self.transport is not None:
            self.transport.signal_config()

    def close(self) -> None:
        self.backend.close()
