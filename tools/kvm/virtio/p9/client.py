"""A small synchronous 9P2000.L client, for tests and benchmarks.

It talks to anything that maps one T-message to one R-message, such as
Server.handle, and turns Rlerror back into OSError.
"""

import errno
import os
from collections.abc import Callable

from . import wire
from .wire import LAYOUTS, Msg


def parse(reply: bytes) -> tuple[int, int, list]:
    """(type, tag, fields) of an R-message; ProtocolError if it is not one."""
    size, rtype, tag = wire.header(reply)
    if size != len(reply):
        raise wire.ProtocolError("reply size field is wrong")
    if rtype == Msg.RLERROR:
        layout = "d"
    elif rtype - 1 in LAYOUTS and rtype & 1:
        layout = LAYOUTS[rtype - 1][1]
    else:
        raise wire.ProtocolError(f"not a reply type: {rtype}")
    return rtype, tag, wire.unpack(layout, memoryview(reply)[wire.HEADER.size:])


def dirents(data: bytes) -> list[tuple]:
    """(qid, offset, type, name) of each entry in Rreaddir data."""
    r, out = wire.Reader(data), []
    while r.pos < len(data):
        out.append(tuple(r.fields(wire.DIRENT)))
    return out


class Client:
    def __init__(self, transport: Callable[[bytes], bytes]) -> None:
        self.transport = transport
        self.tag = 0

    def message(self, mtype: int, *fields) -> bytes:
        self.tag = (self.tag + 1) % wire.NOTAG
        return wire.message(mtype, self.tag, wire.pack(LAYOUTS[mtype][0], *fields))

    def rpc(self, mtype: int, *fields) -> list:
        """Send one request; its reply's fields, or OSError for Rlerror."""
        rtype, tag, out = parse(self.transport(self.message(mtype, *fields)))
        if tag != self.tag:
            raise wire.ProtocolError("reply tag does not match")
        if rtype == Msg.RLERROR:
            raise OSError(out[0], os.strerror(out[0]))
        if rtype != mtype + 1:
            raise wire.ProtocolError("reply type does not match")
        return out

    def mount(self, msize: int = 65536, fid: int = 0, uid: int = 0) -> None:
        self.msize, version = self.rpc(Msg.TVERSION, msize, b"9P2000.L")
        if version != b"9P2000.L":
            raise OSError(errno.EPROTONOSUPPORT, "server refused 9P2000.L")
        self.rpc(Msg.TATTACH, fid, wire.NOFID, b"", b"", uid)

    def walk(self, fid: int, newfid: int, *names: bytes) -> list:
        return self.rpc(Msg.TWALK, fid, newfid, list(names))[0]

    def read_all(self, fid: int, chunk: int = 0) -> bytes:
        chunk = chunk or self.msize - 11
        parts, off = [], 0
        while data := self.rpc(Msg.TREAD, fid, off, chunk)[0]:
            parts.append(data)
            off += len(data)
        return b"".join(parts)

    def readdir_all(self, fid: int) -> list[tuple]:
        out, off = [], 0
        while ents := dirents(self.rpc(Msg.TREADDIR, fid, off, self.msize - 11)[0]):
            out += ents
            off = ents[-1][1]
        return out
