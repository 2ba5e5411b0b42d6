"""struct.Struct packers laid out from the uapi headers' C structs, so
hot paths can (un)pack guest structures in one call without an offset
written by hand."""

import struct

from include.uapi import ffi

# C scalar types by size as struct format codes (little endian throughout:
# virtio 1.x is little endian and so is every host lkvm runs on).
CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def packer(ctype: str) -> struct.Struct:
    """A packer of `ctype`'s scalar fields in declaration order; padding
    and a trailing flexible array are skipped."""
    fmt, pos = "<", 0
    for _, field in ffi.typeof(ctype).fields:
        if field.type.kind != "primitive":
            continue
        fmt += "x" * (field.offset - pos) + CODES[ffi.sizeof(field.type)]
        pos = field.offset + ffi.sizeof(field.type)
    return struct.Struct(fmt)


def to_bytes(ctype: str, **fields: int) -> bytes:
    """`ctype` filled from keyword fields, as bytes."""
    return bytes(ffi.buffer(ffi.new(ctype + " *", fields)))
