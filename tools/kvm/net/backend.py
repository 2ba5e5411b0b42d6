"""What virtio-net asks of a network back end, whatever carries the
frames (a user-mode stack's socket, a tap device's queue): take a frame,
hand over the frames that arrived, and say when the link is gone.  A
back end with offloads takes and gives each frame after the ten bytes
of a struct virtio_net_hdr; one of several queues (a multiqueue tap)
can be turned off while the guest uses fewer.

The device's I/O thread polls fileno() and calls recv() when it is
readable; send() runs on the same thread, on the guest's transmit kicks.
"""

from typing import Protocol

# The largest Ethernet frame without its virtio header: 64 KiB of IP
# datagram (a TSO segment's limit) plus the link-layer headers.
MAX_FRAME = 65550


class LinkDown(Exception):
    """The back end is gone for good; the message says why, for the user."""


class Backend(Protocol):
    # The VIRTIO_NET_F_* offloads it takes (net/features.py): 0, or all of
    # HOST_OFFLOADS and GUEST_OFFLOADS with a virtio_net_hdr on each frame.
    offloads: int

    def fileno(self) -> int:
        """An fd that polls readable when recv() has frames (or news of
        the link going down) for the device."""

    def send(self, frame: bytes) -> None:
        """Pass one frame on; may drop it, as a wire may.  Raises LinkDown."""

    def recv(self) -> list[bytes]:
        """The frames that arrived, a bounded number, without blocking;
        [] when none has.  Raises LinkDown."""

    def set_offloads(self, offloads: int) -> None:
        """Hand the guest only the GUEST_* offloads in `offloads`."""

    def enable(self, on: bool) -> None:
        """Carry frames on this queue or, while the guest uses fewer queue
        pairs, none: the peer sends them to the other queues."""

    def close(self) -> None:
        """Release the back end (and end whatever process serves it)."""
