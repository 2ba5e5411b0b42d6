"""struct.Struct readers for uapi structs, derived from cffi's layout.

For the exit path, where one unpack_from() of the kvm_run page is much
cheaper than a cffi attribute read per field.  Offsets and sizes come from
the bindings, so nothing here restates the ABI.
"""

import struct

from include.uapi import ffi

CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


def reader(ctype: str, fields: tuple[str, ...], base: int = 0) -> tuple[struct.Struct, int]:
    """A Struct that unpacks `fields` (in offset order) of `ctype`, and
    the offset to unpack it from when `ctype` sits `base` bytes in."""
    layout = dict(ffi.typeof(ctype).fields)
    start = layout[fields[0]].offset
    fmt, pos = "<", start
    for name in fields:
        field = layout[name]
        if field.offset < pos:
            raise ValueError(f"{ctype}.{name}: fields must be in offset order")
        size = ffi.sizeof(field.type)
        code = CODES[size]
        fmt += "x" * (field.offset - pos) + (code if field.type.cname.startswith(
            ("signed", "int", "long", "short", "char", "__s")) else code.upper())
        pos = field.offset + size
    return struct.Struct(fmt), base + start
