"""virtio-net's control queue (virtio 1.x §5.1.6.5): each request is a
class and command byte, the command's data, then one device-writable
byte for the answer, VIRTIO_NET_OK or VIRTIO_NET_ERR.

What Linux sends: the receive mode (promiscuous, all-multicast) and the
MAC filter tables whenever its address lists change, a new MAC when the
user sets one, the acknowledgement of an announce request, the number of
queue pairs to use, and the receive offloads (ethtool -K, XDP).  lkvm
filters nothing, which the spec allows (a device "can" filter), so a
well-formed mode or table is acknowledged and every frame still reaches
the guest; the rest are honoured.

The guest writes these buffers: each command's data must be exactly its
size (a MAC table, exactly the size its counts say) and is read no
further, an unknown or unnegotiated command gets VIRTIO_NET_ERR, and a
request with no byte to answer in is given back untouched.
"""

import struct
from collections.abc import Callable
from typing import Protocol

from include.uapi import lib
from net.features import GUEST_OFFLOADS, STATUS_OFFSET, bit, usable
from virtio.iov import advance, prefix, take, total
from virtio.queue import Chain, Virtqueue

MAC_LEN = 6
HEADER = struct.Struct("<BB")        # struct virtio_net_ctrl_hdr: class, command
ENTRIES = struct.Struct("<I")        # a MAC table's count, before its entries
PAIRS = struct.Struct("<H")          # struct virtio_net_ctrl_mq
OFFLOADS = struct.Struct("<Q")       # VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET's data


class NetDevice(Protocol):
    """What the commands change in the device."""
    active: int                     # the features negotiated and usable
    backends: list
    config: bytearray

    def set_pairs(self, pairs: int) -> None: ...

    def set_guest_offloads(self, offloads: int) -> None: ...


Views = list[memoryview]


class Control:
    def __init__(self, dev: NetDevice) -> None:
        self.dev = dev
        # (class, command): the feature it needs, its handler.
        self.commands: dict[tuple[int, int], tuple[int, Callable[[Views], bool]]] = {
            (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_PROMISC):
                (bit("CTRL_RX"), self.rx_mode),
            (lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_RX_ALLMULTI):
                (bit("CTRL_RX"), self.rx_mode),
            (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_TABLE_SET):
                (bit("CTRL_RX"), self.mac_table),
            (lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_ADDR_SET):
                (bit("CTRL_MAC_ADDR"), self.mac_addr),
            (lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_ANNOUNCE_ACK):
                (bit("GUEST_ANNOUNCE"), self.announce_ack),
            (lib.VIRTIO_NET_CTRL_MQ, lib.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET):
                (bit("MQ"), self.pairs),
            (lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS, lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET):
                (bit("CTRL_GUEST_OFFLOADS"), self.offloads),
        }

    def serve(self, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self.answer(chain))

    def answer(self, chain: Chain) -> int:
        """Run one request; the bytes written: its answer, or none."""
        ack = next((v for v in chain.writable if len(v)), None)
        if ack is None:
            return 0
        header, data = take(chain.readable, HEADER.size)
        command = self.commands.get(HEADER.unpack(header) if header else (-1, -1))
        ok = command is not None and bool(self.dev.active & command[0]) and command[1](data)
        ack[0] = lib.VIRTIO_NET_OK if ok else lib.VIRTIO_NET_ERR
        return 1

    @staticmethod
    def exactly(data: Views, size: int) -> bytes | None:
        """The command's data if it is `size` bytes, else None."""
        return prefix(data, size) if total(data) == size else None

    # The commands: True to answer OK.
    def rx_mode(self, data: Views) -> bool:
        on = self.exactly(data, 1)
        return on is not None and on[0] in (0, 1)

    def mac_table(self, data: Views) -> bool:
        """Two tables, unicast then multicast: a count, then that many MACs."""
        for _ in range(2):
            count, data = take(data, ENTRIES.size)
            if count is None:
                return False
            (entries,) = ENTRIES.unpack(count)
            if total(data) < MAC_LEN * entries:
                return False
            data = advance(data, MAC_LEN * entries)
        return not total(data)

    def mac_addr(self, data: Views) -> bool:
        mac = self.exactly(data, MAC_LEN)
        if mac is None:
            return False
        self.dev.config[:MAC_LEN] = mac     # the config starts with it
        return True

    def announce_ack(self, data: Views) -> bool:
        """lkvm never moves a guest, so never asks it to announce itself;
        the acknowledgement clears the request bit all the same."""
        if total(data):
            return False
        self.dev.config[STATUS_OFFSET] &= ~lib.VIRTIO_NET_S_ANNOUNCE & 0xFF
        return True

    def pairs(self, data: Views) -> bool:
        raw = self.exactly(data, PAIRS.size)
        if raw is None:
            return False
        (pairs,) = PAIRS.unpack(raw)
        if not lib.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= len(self.dev.backends):
            return False
        self.dev.set_pairs(pairs)
        return True

    def offloads(self, data: Views) -> bool:
        raw = self.exactly(data, OFFLOADS.size)
        if raw is None:
            return False
        (offloads,) = OFFLOADS.unpack(raw)
        # Only receive offloads the driver took, each with what it needs.
        if offloads & ~(self.dev.active & GUEST_OFFLOADS) or usable(offloads) != offloads:
            return False
        self.dev.set_guest_offloads(offloads)
        return True
