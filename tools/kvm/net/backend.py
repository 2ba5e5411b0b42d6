"""What virtio-net asks of a network back end, whatever carries the
frames (a user-mode stack's socket, a tap device, later vhost): take a
frame, hand over the frames that arrived, and say when the link is gone.

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
    def fileno(self) -> int:
        """An fd that polls readable when recv() has frames (or news of
        the link going down) for the device."""

    def send(self, frame: bytes) -> None:
        """Pass one frame on; may drop it, as a wire may.  Raises LinkDown."""

    def recv(self) -> list[bytes]:
        """The frames that arrived, a bounded number, without blocking;
        [] when none has.  Raises LinkDown."""

    def close(self) -> None:
        """Release the back end (and end whatever process serves it)."""
