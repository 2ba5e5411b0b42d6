"""Just enough AML (ACPI 6.4, chapter 20) to describe lkvm's DSDT: names,
scopes, devices, integers, packages, and resource-template buffers
(chapter 6.4).  Each helper returns the encoded bytes of one term."""

import struct

NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX = 0x0A, 0x0B, 0x0C
ZERO_OP, ONE_OP = 0x00, 0x01
EXT_OP, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR = b"\\"

# Resource descriptors (6.4.2 small, 6.4.3 large).
IO_PORT = 0x47                   # small item 8, 7 bytes follow
END_TAG = 0x79                   # small item 0xF, 1 byte follows
WORD_ADDRESS = 0x88              # large item 8
DWORD_ADDRESS = 0x87             # large item 7
RANGE_MEMORY, RANGE_IO, RANGE_BUS = 0, 1, 2
# General flags: this range is a producer window the bridge decodes, with
# fixed minimum and maximum addresses.
ADDRESS_FLAGS = 0x0C
IO_DECODE_16 = 1
# Type-specific flags: I/O windows pass ISA and non-ISA ports alike,
# memory windows are read-write.
TYPE_FLAGS = {RANGE_IO: 3, RANGE_BUS: 0, RANGE_MEMORY: 1}


def pkg_length(body_len: int) -> bytes:
    """PkgLength counts itself: one byte holds up to 63, else the low
    nibble goes in the lead byte and the rest in up to three more."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | total & 0xF]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {body_len} bytes is too long")


def name_seg(name: str) -> bytes:
    seg = name.encode()
    if len(seg) != 4:
        raise ValueError(f"AML name {name!r} is not four characters")
    return seg


def integer(value: int) -> bytes:
    if value in (0, 1):
        return bytes([ZERO_OP if value == 0 else ONE_OP])
    for prefix, fmt in ((BYTE_PREFIX, "<B"), (WORD_PREFIX, "<H"), (DWORD_PREFIX, "<I")):
        if value < 1 << 8 * struct.calcsize(fmt):
            return bytes([prefix]) + struct.pack(fmt, value)
    raise ValueError(f"AML integer {value:#x} needs more than 32 bits")


def name(label: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_seg(label) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = ROOT_CHAR + name_seg(path.lstrip("\\")) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(label: str, *terms: bytes) -> bytes:
    body = name_seg(label) + b"".join(terms)
    return bytes([EXT_OP, DEVICE_OP]) + pkg_length(len(body)) + body


def eisa_id(text: str) -> bytes:
    """A PNP ID such as PNP0A03 as the compressed 32-bit EISA ID."""
    v = ((ord(text[0]) - 0x40) << 26 | (ord(text[1]) - 0x40) << 21 |
         (ord(text[2]) - 0x40) << 16 | int(text[3:], 16))
    return integer(int.from_bytes(v.to_bytes(4, "big"), "little"))


# Resource templates: the bytes of a _CRS buffer.
def io_port(base: int, length: int) -> bytes:
    return struct.pack("<BBHHBB", IO_PORT, IO_DECODE_16, base, base, 1, length)


def word_range(kind: int, lo: int, hi: int) -> bytes:
    body = struct.pack("<BBBHHHHH", kind, ADDRESS_FLAGS, TYPE_FLAGS[kind], 0, lo, hi, 0,
                       hi - lo + 1)
    return struct.pack("<BH", WORD_ADDRESS, len(body)) + body


def dword_memory(lo: int, hi: int) -> bytes:
    body = struct.pack("<BBBIIIII", RANGE_MEMORY, ADDRESS_FLAGS, TYPE_FLAGS[RANGE_MEMORY], 0,
                       lo, hi, 0, hi - lo + 1)
    return struct.pack("<BH", DWORD_ADDRESS, len(body)) + body


def resources(*descriptors: bytes) -> bytes:
    """A resource template; a zero checksum byte means 'not checksummed'."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))
