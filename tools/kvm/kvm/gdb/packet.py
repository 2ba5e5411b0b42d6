"""The remote serial protocol's framing: `$payload#cc`, where cc is the
payload's byte sum modulo 256 in two hex digits, `}` escapes the next
byte (xored with 0x20) and a lone 0x03 is an interrupt (Ctrl-C).  What
arrives comes from the network: any byte sequence must leave the reader
in a sane state, and no packet may grow past MAX_PACKET."""

import re
from dataclasses import dataclass
from enum import Enum, auto

# The largest packet accepted and offered (qSupported PacketSize): a 4 KiB
# memory read in hex fits with room to spare.
MAX_PACKET = 0x4000
INTERRUPT = 0x03
RESERVED = re.compile(rb"[$#}*]")
ESCAPE = re.compile(rb"}(.)", re.S)
HEX = b"0123456789abcdefABCDEF"


class Event(Enum):
    PACKET = auto()      # a well-formed packet (ack it)
    INTERRUPT = auto()   # Ctrl-C
    ACK = auto()         # '+'
    NAK = auto()         # '-': send the last packet again
    BAD_CHECKSUM = auto()
    OVERSIZED = auto()
    GARBAGE = auto()     # bytes outside any packet


# The bytes that stand alone outside packets.
SINGLE = {INTERRUPT: Event.INTERRUPT, ord("+"): Event.ACK, ord("-"): Event.NAK}


@dataclass
class Received:
    event: Event
    payload: bytes = b""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def unescape(raw: bytes) -> bytes:
    return ESCAPE.sub(lambda m: bytes((m[1][0] ^ 0x20,)), raw)


def frame(payload: bytes) -> bytes:
    """A packet to send, with the bytes the protocol reserves escaped."""
    body = RESERVED.sub(lambda m: bytes((ord("}"), m[0][0] ^ 0x20)), payload)
    return b"$" + body + b"#%02x" % checksum(body)


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
        i, n = 0, len(data)
        while i < n:
            if self._sum is not None:
                take = data[i:i + 2 - len(self._sum)]
                self._sum += take
                i += len(take)
                if len(self._sum) == 2:
                    events.append(self._end())
            elif self._body is not None:
                # A body runs to its '#'; found by find(), not byte by byte.
                end = min((j for j in (data.find(b"#", i), data.find(b"$", i)) if j >= 0),
                          default=n)
                room = MAX_PACKET - len(self._body)
                self._oversized |= end - i > room
                self._body += data[i:i + min(end - i, room)]
                i = end + 1
                if end == n:
                    break
                if data[end] == ord("#"):
                    self._sum = bytearray()
                else:  # a new start: the old packet was cut off
                    garbage = True
                    self._body, self._oversized = bytearray(), False
            else:
                b = data[i]
                i += 1
                if b == ord("$"):
                    self._body, self._oversized = bytearray(), False
                elif b in SINGLE:
                    events.append(Received(SINGLE[b]))
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
