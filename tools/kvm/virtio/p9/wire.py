"""The 9P2000.L wire format.

Every message is size[4] type[1] tag[2] followed by fields laid out as the
type says.  Integers are little-endian, strings are a u16 length and bytes
(no NUL), a qid is type[1] version[4] path[8].  A layout is written as a
string of field codes, one letter per field:

    b u8    w u16    d u32    q u64    Q qid
    s string           S u16 count of strings (Twalk names)
    A u16 count of qids (Rwalk)      D u32 count of bytes (Tread/Rwrite data)

Anything short, long or with a count that runs past the end raises
ProtocolError, an OSError carrying EPROTO, so callers answer it like any
other failed request.
"""

import enum
import errno
import functools
import re
import struct
from collections.abc import Callable

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
NONUNAME = 0xFFFFFFFF
MAX_WALK = 16
DIRENT = "Qqbs"                 # one Rreaddir entry: qid offset type name

HEADER = struct.Struct("<IBH")
QID = struct.Struct("<BIQ")
DIRENT_HEAD = struct.Struct("<BIQQBH")  # an Rreaddir entry up to its name's bytes


class Msg(enum.IntEnum):
    """Message types; each reply is its request's type plus one."""

    TLERROR = 6
    RLERROR = 7
    TSTATFS = 8
    TLOPEN = 12
    TLCREATE = 14
    TSYMLINK = 16
    TMKNOD = 18
    TRENAME = 20
    TREADLINK = 22
    TGETATTR = 24
    TSETATTR = 26
    TXATTRWALK = 30
    TXATTRCREATE = 32
    TREADDIR = 40
    TFSYNC = 50
    TLOCK = 52
    TGETLOCK = 54
    TLINK = 70
    TMKDIR = 72
    TRENAMEAT = 74
    TUNLINKAT = 76
    TVERSION = 100
    TAUTH = 102
    TATTACH = 104
    TFLUSH = 108
    TWALK = 110
    TREAD = 116
    TWRITE = 118
    TCLUNK = 120
    TREMOVE = 122


# (request layout, reply layout) of every message 9P2000.L defines.
LAYOUTS: dict[int, tuple[str, str]] = {
    Msg.TSTATFS: ("d", "ddqqqqqqd"),
    Msg.TLOPEN: ("dd", "Qd"),
    Msg.TLCREATE: ("dsddd", "Qd"),
    Msg.TSYMLINK: ("dssd", "Q"),
    Msg.TMKNOD: ("dsdddd", "Q"),
    Msg.TRENAME: ("dds", ""),
    Msg.TREADLINK: ("d", "s"),
    Msg.TGETATTR: ("dq", "qQdddqqqqqqqqqqqqqqq"),
    Msg.TSETATTR: ("dddddqqqqq", ""),
    Msg.TXATTRWALK: ("dds", "q"),
    Msg.TXATTRCREATE: ("dsqd", ""),
    Msg.TREADDIR: ("dqd", "D"),
    Msg.TFSYNC: ("dd", ""),
    Msg.TLOCK: ("dbdqqds", "b"),
    Msg.TGETLOCK: ("dbqqds", "bqqds"),
    Msg.TLINK: ("dds", ""),
    Msg.TMKDIR: ("dsdd", "Q"),
    Msg.TRENAMEAT: ("dsds", ""),
    Msg.TUNLINKAT: ("dsd", ""),
    Msg.TVERSION: ("ds", "ds"),
    Msg.TAUTH: ("dssd", "Q"),
    Msg.TATTACH: ("ddssd", "Q"),
    Msg.TFLUSH: ("w", ""),
    Msg.TWALK: ("ddS", "A"),
    Msg.TREAD: ("dqd", "D"),
    Msg.TWRITE: ("dqD", "d"),
    Msg.TCLUNK: ("d", ""),
    Msg.TREMOVE: ("d", ""),
}

_INTS = {"b": "B", "w": "H", "d": "I", "q": "Q"}
_FIXED = {**_INTS, "Q": "BIQ"}          # a qid is three integers
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


@functools.cache
def _compile(layout: str) -> tuple:
    """A layout as steps: a Struct for each run of integers, else a code.

    Runs of fixed-size fields are (un)packed in one call, which is most of
    the cost of a message.
    """
    return tuple(struct.Struct("<" + "".join(_INTS[c] for c in run))
                 if run[0] in _INTS else run
                 for run in re.findall(r"[bwdq]+|[^bwdq]", layout))


class ProtocolError(OSError):
    """A message that does not parse; answered with Rlerror like any error."""

    def __init__(self, why: str, err: int = errno.EPROTO) -> None:
        super().__init__(err, why)


class Reader:
    """Pulls fields off a buffer, never past its end."""

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise ProtocolError("message too short")
        part = self.buf[self.pos:self.pos + n]
        self.pos += n
        return part

    def uint(self, st: struct.Struct) -> int:
        return st.unpack(self.take(st.size))[0]

    def fields(self, layout: str) -> list:
        out = []
        for step in _compile(layout):
            if isinstance(step, struct.Struct):
                out += step.unpack(self.take(step.size))
            else:
                out.append(_READ[step](self))
        return out

    def string(self) -> bytes:
        return bytes(self.take(self.uint(_U16)))

    def qid(self) -> tuple[int, int, int]:
        return QID.unpack(self.take(QID.size))

    def names(self) -> list[bytes]:
        n = self.uint(_U16)
        if n > MAX_WALK:
            raise ProtocolError("too many walk names", errno.E2BIG)
        return [self.string() for _ in range(n)]

    def qids(self) -> list[tuple[int, int, int]]:
        return [self.qid() for _ in range(self.uint(_U16))]

    def data(self) -> bytes:
        return bytes(self.take(self.uint(_U32)))

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError("trailing bytes in message")


_READ = {"s": Reader.string, "Q": Reader.qid, "S": Reader.names,
         "A": Reader.qids, "D": Reader.data}


def unpack(layout: str, body: bytes | memoryview) -> list:
    """The fields of body laid out as layout; the body must be exactly that."""
    r = Reader(body)
    fields = r.fields(layout)
    r.end()
    return fields


def _string(s: bytes) -> bytes:
    if len(s) > 0xFFFF:
        raise ProtocolError("string too long", errno.ENAMETOOLONG)
    return _U16.pack(len(s)) + s


_WRITE = {
    "s": _string,
    "Q": lambda q: QID.pack(*q),
    "S": lambda names: _U16.pack(len(names)) + b"".join(map(_string, names)),
    "A": lambda qids: _U16.pack(len(qids)) + b"".join(QID.pack(*q) for q in qids),
    "D": lambda data: _U32.pack(len(data)) + bytes(data),
}


def pack(layout: str, *fields) -> bytes:
    """The body for fields laid out as layout."""
    if len(fields) != len(layout):
        raise TypeError(f"layout {layout!r} takes {len(layout)} fields")
    out, i = [], 0
    for step in _compile(layout):
        if isinstance(step, struct.Struct):
            n = len(step.format) - 1
            out.append(step.pack(*fields[i:i + n]))
            i += n
        else:
            out.append(_WRITE[step](fields[i]))
            i += 1
    return b"".join(out)


def header(msg: bytes | memoryview) -> tuple[int, int, int]:
    """(size, type, tag) of a message; the size field is not checked here."""
    if len(msg) < HEADER.size:
        raise ProtocolError("message shorter than its header")
    return HEADER.unpack_from(msg)


def message(mtype: int, tag: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), mtype, tag) + body


def rlerror(tag: int, err: int) -> bytes:
    return message(Msg.RLERROR, tag, _U32.pack(err))


def dirent(qid: tuple[int, int, int], offset: int, dtype: int, name: bytes) -> bytes:
    """One Rreaddir entry; name is a directory entry's, so well under 64 KiB."""
    return DIRENT_HEAD.pack(*qid, offset, dtype, len(name)) + name


# A server parses and builds a message per request, so what it can it
# does in one struct call: a layout of fixed-size fields only (most
# requests, and most replies once a qid counts as three integers) becomes
# one Struct with the header in it.

Decoder = Callable[[bytes | memoryview], tuple | list]
Encoder = Callable[[int, int, tuple], bytes]


def _fixed(layout: str, head: str = "<") -> struct.Struct | None:
    """head and then the layout's fields as one Struct, if they are all
    fixed-size."""
    if not set(layout) <= _FIXED.keys():
        return None
    return struct.Struct(head + "".join(_FIXED[c] for c in layout))


def decoder(layout: str) -> Decoder:
    """A function giving the fields of a whole message (header and all)
    laid out as layout; the message must be exactly that long."""
    body = _fixed(layout) if "Q" not in layout else None
    if body is None:
        return lambda msg: unpack(layout, memoryview(msg)[HEADER.size:])
    size = HEADER.size + body.size

    def decode(msg: bytes | memoryview) -> tuple:
        if len(msg) != size:
            raise ProtocolError("message too short" if len(msg) < size
                                else "trailing bytes in message")
        return body.unpack_from(msg, HEADER.size)
    return decode


def encoder(layout: str) -> Encoder:
    """A function giving the whole message (type, tag, fields) for fields
    laid out as layout."""
    whole = _fixed(layout, HEADER.format)
    if whole is None:
        return lambda mtype, tag, fields: message(mtype, tag, pack(layout, *fields))
    if "Q" not in layout:
        return lambda mtype, tag, fields: whole.pack(whole.size, mtype, tag, *fields)
    at = layout.index("Q")
    if "Q" in layout[at + 1:]:
        raise ValueError(f"layout {layout!r}: one qid at most")   # no message has two

    def encode(mtype: int, tag: int, fields: tuple) -> bytes:
        return whole.pack(whole.size, mtype, tag, *fields[:at], *fields[at], *fields[at + 1:])
    return encode


# Per message type: (request decoder, reply encoder).
CODECS: dict[int, tuple[Decoder, Encoder]] = {
    mtype: (decoder(req), encoder(reply)) for mtype, (req, reply) in LAYOUTS.items()}
