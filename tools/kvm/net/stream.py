"""QEMU's stream protocol on a connected socket (what `-netdev stream`
and passt speak): each frame as a 4-byte big-endian length, then the
Ethernet frame.

The peer is another process, not the guest, but it is still bounded: a
length past MAX_FRAME, or a peer that stops taking frames for
SEND_TIMEOUT seconds, ends the link rather than lkvm's memory or thread.
"""

import socket
import struct

from net.backend import MAX_FRAME, LinkDown

LENGTH = struct.Struct(">I")
RECV_BYTES = 256 << 10  # read at a time: a burst of frames, never an unbounded one
SEND_TIMEOUT = 5        # seconds a peer may keep its socket buffer full


class StreamBackend:
    offloads = 0        # whole frames only, as the protocol carries them

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Blocking sends with a kernel timeout (reads pass MSG_DONTWAIT):
        # a frame is written whole or the stream is lost, never half.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", SEND_TIMEOUT, 0))
        self.inbuf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        try:
            self.sock.sendall(LENGTH.pack(len(frame)) + frame)
        except OSError as e:
            raise LinkDown(self.why(f"sending a frame failed: {e.strerror or e}")) from None

    def recv(self) -> list[bytes]:
        try:
            data = self.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError as e:
            raise LinkDown(self.why(f"receiving failed: {e.strerror or e}")) from None
        if not data:
            raise LinkDown(self.why("it closed the connection"))
        self.inbuf += data
        frames, pos = [], 0
        while len(self.inbuf) - pos >= LENGTH.size:
            (n,) = LENGTH.unpack_from(self.inbuf, pos)
            if not 0 < n <= MAX_FRAME:
                raise LinkDown(self.why(f"it sent a frame of {n} bytes"))
            if len(self.inbuf) - pos - LENGTH.size < n:
                break
            frames.append(bytes(self.inbuf[pos + LENGTH.size:pos + LENGTH.size + n]))
            pos += LENGTH.size + n
        del self.inbuf[:pos]  # at most one partial frame stays
        return frames

    def set_offloads(self, offloads: int) -> None:
        """Nothing to hand on: no offload is ever offered over a stream."""

    def enable(self, on: bool) -> None:
        """Nothing to turn off: a stream is one queue."""

    def why(self, what: str) -> str:
        """What to tell the user when the link goes down; a back end that
        knows more (a process's exit status) says more."""
        return f"network back end: {what}"

    def close(self) -> None:
        self.sock.close()
