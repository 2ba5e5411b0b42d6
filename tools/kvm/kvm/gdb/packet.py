"""The remote serial protocol's framing: `$payload#cc`, where cc is the
payload's byte sum modulo 256 in two hex digits, `}` escapes the next
byte (xored with 0x20) and a lone 0x03 is an interrupt (Ctrl-C).  What
arrives comes from the network: any byte sequence must leave the reader
in a sane state, and no packet may grow past MAX_PACKET."""

from dataclasses import dataclass
from enum import Enum, auto

# The largest packet accepted and offered (qSupported PacketSize): a 4 KiB
# memory read in hex fits with room to spare.
MAX_PACKET = 0x4000
INTERRUPT = 0x03
ESCAPED = b"$#}*"
HEX = b"0123456789abcdefABCDEF"


class Event(Enum):
    PACKET = auto()      # a well-formed packet (ack it)
    INTERRUPT = auto()   # Ctrl-C
    ACK = auto()         # '+'
    NAK = auto()         # '-': send the last packet again
    BAD_CHECKSUM = auto()
    OVERSIZED = auto()
    GARBAGE = auto()     # bytes outside any packet


@dataclass
class Received:
    event: Event
    payload: bytes = b""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def unescape(raw: bytes) -> bytes:
    out = bytearray()
    it = iter(raw)
    for b in it:
        out.append(next(it, 0x20) ^ 0x20 if b == ord("}") else b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """A packet to send, with the bytes the protocol reserves escaped."""
    body = bytearray()
    for b in payload:
        if b in ESCAPED:
            body += bytes((ord("}"), b ^ 0x20))
        else:
            body.append(b)
    return b"$" + bytes(body) + b"#%02x" % checksum(body)


class Reader:
    """Bytes in, events out; state carries over between feed() calls, so
    a packet may arrive in any number of pieces."""

    def __init__(self) -> None:
        self._body: bytearray | None = None  # inside a packet
        self._sum: bytearray | None = None   # after its '#'
        self._oversized = False

    def feed(self, data: bytes) -> list[Received]:
        events: list[Received] = []
        garbage = False
        for b in data:
            if self._sum is not None:
                self._sum.append(b)
                if len(self._sum) == 2:
                    events.append(self._end())
            elif self._body is not None:
                if b == ord("#"):
                    self._sum = bytearray()
                elif b == ord("$"):  # a new start: the old packet was cut off
                    garbage = True
                    self._body, self._oversized = bytearray(), False
                elif len(self._body) >= MAX_PACKET:
                    self._oversized = True
                else:
                    self._body.append(b)
            elif b == ord("$"):
                self._body, self._oversized = bytearray(), False
            elif b == INTERRUPT:
                events.append(Received(Event.INTERRUPT))
            elif b == ord("+"):
                events.append(Received(Event.ACK))
            elif b == ord("-"):
                events.append(Received(Event.NAK))
            else:
                garbage = True
        if garbage:
            events.append(Received(Event.GARBAGE))
        return events

    def _end(self) -> Received:
        body, digits = bytes(self._body), bytes(self._sum)
        oversized = self._oversized
        self._body = self._sum = None
        self._oversized = False
        if oversized:
            return Received(Event.OVERSIZED)
        if not all(c in HEX for c in digits) or int(digits, 16) != checksum(body):
            return Received(Event.BAD_CHECKSUM)
        return Received(Event.PACKET, unescape(body))

    @property
    def mid_packet(self) -> bool:
        return self._body is not None
