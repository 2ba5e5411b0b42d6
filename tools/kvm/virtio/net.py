"""virtio-net (virtio 1.x §5.1): receive and transmit queue pairs, one
per back end queue (mq=), then the control queue; the MAC and link
status in config space, mergeable receive buffers, and the checksum and
segmentation offloads of a back end that takes them.

Every frame carries a virtio_net_hdr in front.  A back end with
offloads (a tap with a vnet header) takes and gives that header's first
ten bytes with each frame, so a partial checksum or a 64 KiB TCP
segment passes through untouched.  One without (passt: whole frames
only) gets no offload offered: completing checksums and cutting
segments here, in Python on the device's thread, would cost more than
the guest's kernel doing it, and passt's 65520-byte MTU already lets
the guest send large frames.  A transmitted header must ask for no
offload the driver did not negotiate.  A transmit chain is read up to
the largest frame and no further; a bad one (device-writable, empty,
oversized) is dropped and given back, as a wire drops a bad frame.

Received frames wait in a bounded list per queue pair for the guest's
buffers.  With VIRTIO_NET_F_MRG_RXBUF a frame spans as many chains as it
needs, num_buffers in the first header saying how many; without it, one
chain must hold it whole, or the frame is dropped (the chain stays
posted).  A frame the mergeable buffers posted so far cannot hold puts
the chains taken back on the ring and waits for the next receive kick.
A receive chain with no device-writable buffer breaks the queue rules:
the device stops until reset.

The control queue (net/ctrl.py's commands) answers what Linux sends:
receive modes and MAC tables are acknowledged and every frame is still
delivered (the spec lets a device filter less than asked), a new MAC
lands in config space, and VQ_PAIRS_SET turns the back end's queues on
and off.

When a back end dies the link goes down (VIRTIO_NET_S_LINK_UP clears
and the driver gets a config interrupt), lkvm says why once and keeps
running; frames sent after that are dropped.  The back ends are closed
then, which also takes their fds out of the I/O thread's epoll set.
"""

from collections import deque
from collections.abc import Callable, Sequence

from include.uapi import lib
from kvm import msg
from kvm.cstruct import packer, to_bytes
from kvm.errors import GuestError
from net.backend import MAX_FRAME, Backend, LinkDown
from net.ctrl import Control
from net.features import GUEST_OFFLOADS, STATUS_OFFSET, bit, usable
from net.vhost import VHOST_FEATURES, VhostNet
from virtio.device import VirtioDevice
from virtio.iov import prefix, scatter, total
from virtio.queue import Chain, QueueError, Virtqueue
from virtio.vhost import reason

RX, TX = 0, 1       # a pair's queues: pair p receives on 2 p, transmits on 2 p + 1
HDR = packer("struct virtio_net_hdr")                   # legacy, without num_buffers
# Modern or mergeable: virtio_net_hdr_mrg_rxbuf laid out flat, as virtio 1.x names it.
HDR_MRG = packer("struct virtio_net_hdr_v1")
PENDING_FRAMES = 256   # received frames kept per pair while the guest posts no buffers


BASE_FEATURES = bit("MAC") | bit("STATUS") | bit("MRG_RXBUF") | bit("CTRL_VQ") | \
    bit("CTRL_RX") | bit("CTRL_MAC_ADDR") | bit("GUEST_ANNOUNCE")
# What a transmitted header's gso_type needs negotiated; absent, it is refused.
GSO_NEEDS = {lib.VIRTIO_NET_HDR_GSO_NONE: 0, lib.VIRTIO_NET_HDR_GSO_TCPV4: bit("HOST_TSO4"),
             lib.VIRTIO_NET_HDR_GSO_TCPV6: bit("HOST_TSO6")}
GSO_ECN = lib.VIRTIO_NET_HDR_GSO_ECN
# ... and what a received one's needs the guest to have taken.
GUEST_GSO_NEEDS = {lib.VIRTIO_NET_HDR_GSO_NONE: 0, lib.VIRTIO_NET_HDR_GSO_TCPV4: bit("GUEST_TSO4"),
                   lib.VIRTIO_NET_HDR_GSO_TCPV6: bit("GUEST_TSO6")}
NEEDS_CSUM, DATA_VALID = lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, lib.VIRTIO_NET_HDR_F_DATA_VALID


class Net(VirtioDevice):
    device_id = lib.VIRTIO_ID_NET
    name = "net"

    def __init__(self, mem: object, backends: Sequence[Backend], mac: bytes,
                 vhost: Sequence[VhostNet] = ()) -> None:
        self.num_queues = 2 * len(backends) + 1
        super().__init__(mem)
        self.backends = list(backends)
        self.vhost = list(vhost)        # one per pair with vhost=1, serving its rings
        offloads = backends[0].offloads
        self.features = BASE_FEATURES | offloads | \
            (bit("CTRL_GUEST_OFFLOADS") if offloads & GUEST_OFFLOADS else 0) | \
            (bit("MQ") if len(backends) > 1 else 0)
        self.link_up = True
        self.pending: list[deque[bytes]] = [deque() for _ in backends]
        self.dropped = 0        # frames lost: bad transmits, nowhere to receive
        self.config = bytearray(to_bytes("struct virtio_net_config", mac=list(mac),
                                         status=lib.VIRTIO_NET_S_LINK_UP,
                                         max_virtqueue_pairs=len(backends)))
        self.ctrl = Control(self)
        self.on_reset()

    def offered(self) -> int:
        """Without what vhost-net would have to do and cannot."""
        lacks = VHOST_FEATURES & ~self.vhost[0].features if self.vhost else 0
        return super().offered() & ~lacks

    def set_status(self, value: int) -> None:
        with self.lock:
            go = value & ~self.status & lib.VIRTIO_CONFIG_S_DRIVER_OK
            super().set_status(value)
            if go and self.vhost:
                self.transport.iothread.call(self._start_vhost)

    def _start_vhost(self) -> None:
        """On the I/O thread: hand each pair the driver set up to its
        vhost-net, unless the driver reset the device since asking; the
        tap's vnet header becomes the driver's, which vhost-net leaves
        to it."""
        t = self.transport
        with self.lock:
            if not self.status & lib.VIRTIO_CONFIG_S_DRIVER_OK or self.broken:
                return
            for p, vhost in enumerate(self.vhost):
                rings = self.queues[2 * p], self.queues[2 * p + 1]
                if vhost.running or not all(r.enabled for r in rings):
                    continue
                try:
                    self.backends[p].set_header_size(self.hdr.size)
                    vhost.start(t.iothread, self.driver_features, rings,
                                (t.kicks[2 * p], t.kicks[2 * p + 1]), self.backends[p].fileno(),
                                lambda i, p=p: t.signal_queue(2 * p + i),
                                lambda i, p=p: t.queue_irqfd(2 * p + i))
                except (OSError, GuestError) as e:
                    vhost.stop(t.iothread)
                    self.fail(f"vhost-net refused the queues: {reason(e)}")
                    return

    def _stop_vhost(self) -> None:
        for p, vhost in enumerate(self.vhost):
            if vhost.taken:
                vhost.stop(self.transport.iothread)
                self.backends[p].set_header_size(HDR.size)

    def interrupts_moved(self) -> None:
        with self.lock:
            for vhost in self.vhost:
                vhost.reroute()

    def negotiated(self, features: int) -> None:
        # The header has num_buffers unless a legacy driver left out
        # mergeable buffers (virtio 1.x §5.1.6).
        self.active = usable(features)
        modern = features >> lib.VIRTIO_F_VERSION_1 & 1
        self.mergeable = bool(features & bit("MRG_RXBUF"))
        self.hdr = HDR_MRG if modern or self.mergeable else HDR
        # Without MQ the control queue follows the first pair (§5.1.2).
        self.ctrl_index = len(self.backends) * 2 if self.active & bit("MQ") else 2
        self.set_guest_offloads(self.active & GUEST_OFFLOADS)

    def on_reset(self) -> None:
        self._stop_vhost()
        self.active = 0
        self.mergeable = False
        self.hdr = HDR_MRG
        self.ctrl_index = 2
        for pending in self.pending:
            pending.clear()
        self.set_guest_offloads(0)
        self.set_pairs(1)

    def set_guest_offloads(self, offloads: int) -> None:
        """What the back end may hand the guest: its checksums left partial,
        its segments whole (VIRTIO_NET_F_GUEST_*)."""
        self.guest_offloads = offloads
        if self.backends[0].offloads:
            self._tell(self.backends[0].set_offloads, offloads)

    def set_pairs(self, pairs: int) -> None:
        """Serve the first `pairs` queue pairs; the back end stops sending
        the others' queues frames."""
        self.pairs = pairs
        for p, backend in enumerate(self.backends[1:], 1):
            if p >= pairs:
                self.pending[p].clear()
            self._tell(backend.enable, p < pairs)

    def _tell(self, setting: Callable[[int], None], value: int) -> None:
        """Give the back end a setting of the driver's (on the vCPU that
        wrote it).  One it can no longer take (a tap deleted under lkvm)
        takes the link down, as a failed send does, not lkvm."""
        if not self.link_up:
            return
        try:
            setting(value)
        except LinkDown as e:
            self._link_down(str(e))

    def process(self, index: int, queue: Virtqueue) -> None:
        if index == self.ctrl_index:
            if self.active & bit("CTRL_VQ"):
                self.ctrl.serve(queue)
        elif index < 2 * self.pairs and not (self.vhost and self.vhost[index // 2].running):
            (self._fill if index % 2 == RX else self._transmit)(index // 2, queue)

    # Transmit.
    def _transmit(self, pair: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            frame = self._frame(chain)
            if frame is None:
                self.dropped += 1
            elif self.link_up:
                try:
                    self.backends[pair].send(frame)
                except LinkDown as e:
                    self._link_down(str(e))
            queue.push(chain.head, 0)

    def _frame(self, chain: Chain) -> bytes | None:
        """What a transmit chain holds for the back end, or None if it is
        no good: the Ethernet frame, after the ten bytes of its header
        for a back end that takes offloads.  The header must ask for no
        offload the driver did not negotiate; the back end checks the
        rest of it (a tap refuses a header that does not fit its frame)."""
        size = total(chain.readable)
        if chain.writable or not self.hdr.size < size <= self.hdr.size + MAX_FRAME:
            return None
        data = prefix(chain.readable, size)
        flags, gso_type = HDR.unpack_from(data)[:2]
        needs = GSO_NEEDS.get(gso_type & ~GSO_ECN)
        if needs is None or flags & ~NEEDS_CSUM or gso_type & GSO_ECN and needs == 0:
            return None
        needs |= (bit("CSUM") if flags & NEEDS_CSUM else 0) | \
            (bit("HOST_ECN") if gso_type & GSO_ECN else 0)
        if needs & ~self.active:
            return None
        if self.backends[0].offloads:
            return data[:HDR.size] + data[self.hdr.size:]
        return data[self.hdr.size:]

    # Receive.
    def receive(self, pair: int = 0) -> None:
        """A back end's fd polled readable (on the device's I/O thread)."""
        with self.lock:
            if not self.link_up:
                return
            try:
                frames = self.backends[pair].recv()
            except LinkDown as e:
                self._link_down(str(e))
                return
            pending = self.pending[pair]
            for frame in frames:
                item = self._received(frame)
                if item is None or len(pending) == PENDING_FRAMES:
                    self.dropped += 1
                else:
                    pending.append(item)
        self.notify(2 * pair + RX)

    def _received(self, frame: bytes) -> bytes | None:
        """A frame from the back end as it waits for the guest: the ten
        bytes of virtio_net_hdr, then the Ethernet frame; None to drop
        it.  A back end's own header keeps the offloads the guest took (a
        checksum known good, one left to complete, a whole segment); one
        asking for an offload it did not take is dropped, and DATA_VALID
        means nothing to a guest without GUEST_CSUM."""
        if not self.backends[0].offloads:
            return bytes(HDR.size) + frame
        if len(frame) <= HDR.size:
            return None
        flags, gso_type = frame[0], frame[1]
        csum = self.guest_offloads & bit("GUEST_CSUM")
        needs = GUEST_GSO_NEEDS.get(gso_type & ~GSO_ECN)
        if needs is None or needs & ~self.guest_offloads or flags & NEEDS_CSUM and not csum \
                or gso_type & GSO_ECN and not self.guest_offloads & bit("GUEST_ECN"):
            return None
        kept = flags & (NEEDS_CSUM | (DATA_VALID if csum else 0))
        return frame if kept == flags else bytes([kept]) + frame[1:]

    def _fill(self, pair: int, queue: Virtqueue) -> None:
        pending = self.pending[pair]
        while pending and self._place(queue, pending[0]):
            pending.popleft()

    def _place(self, queue: Virtqueue, item: bytes) -> bool:
        """Put one received frame in the guest's receive buffers (or drop
        it); False, with the ring as it was, to wait for more buffers."""
        need = self.hdr.size + len(item) - HDR.size
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
        item = memoryview(item)
        num_buffers = len(chains).to_bytes(2, "little") if self.hdr is HDR_MRG else b""
        data = memoryview(b"".join((item[:HDR.size], num_buffers, item[HDR.size:])))
        for chain in chains:
            n = scatter(chain.writable, data)
            data = data[n:]
            queue.push(chain.head, n)
        return True

    # The link.
    def _link_down(self, why: str) -> None:
        msg.warning(f"virtio-net: {why}; the guest's link is down")
        self.link_up = False
        for pending in self.pending:
            pending.clear()
        self.close()
        self.config[STATUS_OFFSET] &= ~lib.VIRTIO_NET_S_LINK_UP & 0xFF
        if self.transport is not None:
            self.transport.signal_config()

    def close(self) -> None:
        for vhost in self.vhost:
            vhost.close()
        for backend in self.backends:
            backend.close()
