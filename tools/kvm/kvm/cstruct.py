"""struct.Struct formats laid out from the uapi headers' C structs, so
hot paths (the exit path's kvm_run, the virtqueue's rings) (un)pack a
kernel or guest structure in one call without an offset written by hand;
one unpack_from() is much cheaper than a cffi read per field."""

import struct

from include.uapi import ffi

# C scalar types by size as struct format codes; little endian throughout
# (virtio 1.x is little endian, and so is every host lkvm runs on).
CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
# How cffi names the signed scalar types, which take the lower-case codes.
SIGNED = ("signed", "int", "long", "short", "char")


def code(ctype: object) -> str:
    """The format code of a scalar cffi type."""
    c = CODES[ffi.sizeof(ctype)]
    return c.lower() if ctype.cname.startswith(SIGNED) else c


def packer(ctype: str, fields: tuple[str, ...] | None = None) -> struct.Struct:
    """A packer of `fields` of `ctype` (by default every scalar field: a
    trailing flexible array is left out), in offset order, starting at
    the first one's offset; padding between them is skipped."""
    layout = ffi.typeof(ctype).fields
    if fields is None:
        fields = tuple(name for name, f in layout if f.type.kind == "primitive")
    by_name = dict(layout)
    fmt, pos = "<", by_name[fields[0]].offset
    for name in fields:
        field = by_name[name]
        if field.offset < pos:
            raise ValueError(f"{ctype}.{name}: fields must be in offset order")
        fmt += "x" * (field.offset - pos) + code(field.type)
        pos = field.offset + ffi.sizeof(field.type)
    return struct.Struct(fmt)


def reader(ctype: str, fields: tuple[str, ...], base: int = 0) -> tuple[struct.Struct, int]:
    """packer() of `fields`, and the offset to unpack them from when
    `ctype` sits `base` bytes into a buffer."""
    return packer(ctype, fields), base + dict(ffi.typeof(ctype).fields)[fields[0]].offset


def to_bytes(ctype: str, **fields: int) -> bytes:
    """`ctype` filled from keyword fields, as bytes."""
    return bytes(ffi.buffer(ffi.new(ctype + " *", fields)))
