"""A flattened device tree, written in order with libfdt's sequential
writer (pylibfdt): what an arm64 or a ppc64 kernel learns the machine
from.  The arch directories write their machines' nodes with it."""

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import libfdt

from kvm.errors import LkvmError

Value = str | int | list[int] | list[str] | bytes
FINISH_ROOM = 16  # more than the end tag fdt_finish() writes


def encode(value: Value) -> bytes:
    """A property's bytes: a string, a u32 cell or a list of them, a
    string list, or bytes as they are."""
    if isinstance(value, str):
        return value.encode() + b"\0"
    if isinstance(value, int):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], str):
        return b"".join(s.encode() + b"\0" for s in value)
    if isinstance(value, list):
        return struct.pack(f">{len(value)}I", *value)
    return value


def u64_cells(*values: int) -> list[int]:
    """64-bit numbers as two cells each (#address-cells = #size-cells = 2)."""
    return [c for v in values for c in (v >> 32, v & 0xFFFFFFFF)]


class DeviceTree:
    def __init__(self, reserved: tuple[tuple[int, int], ...] = ()) -> None:
        """`reserved`: (address, size) of memory the kernel is to leave alone."""
        self._sw = libfdt.FdtSw()
        for addr, size in reserved:
            self._sw.add_reservemap_entry(addr, size)
        self._sw.finish_reservemap()

    @contextmanager
    def node(self, name: str, props: dict[str, Value]) -> Iterator["DeviceTree"]:
        """A node with `props`, and whatever the with-block adds."""
        self._sw.begin_node(name)
        for key, value in props.items():
            self.prop(key, value)
        yield self
        self._sw.end_node()

    def leaf(self, name: str, props: dict[str, Value]) -> None:
        with self.node(name, props):
            pass

    def prop(self, name: str, value: Value) -> None:
        self._sw.property(name, encode(value))

    def finish(self, limit: int) -> bytes:
        # fdt_finish() appends the end tag; the writer grows its buffer for
        # each property and node, but Debian 12's pylibfdt (1.6.1) not for
        # that, and fails with FDT_ERR_NOSPACE when the buffer is full.
        self._sw.resize(self._sw.totalsize() + FINISH_ROOM)
        fdt = self._sw.as_fdt()
        blob = bytes(fdt.as_bytearray()[:fdt.totalsize()])  # not the buffer's slack
        if len(blob) > limit:
            raise LkvmError(f"the device tree ({len(blob)} bytes) does not fit in the "
                            f"{limit >> 10} KiB lkvm keeps for it (a very long -p?)")
        return blob


def chosen_and_memory(dt: DeviceTree, cmdline: str, initrd: tuple[int, int] | None,
                      ram: list[tuple[int, int]], chosen: dict[str, Value]) -> None:
    """/chosen (the command line, the initrd's bounds, and the arch's
    `chosen` properties) and a memory node per RAM region, as both arm64
    and ppc64 kernels read them (#address-cells = #size-cells = 2)."""
    chosen = {"bootargs": cmdline, **chosen}
    if initrd:
        chosen |= {"linux,initrd-start": u64_cells(initrd[0]),
                   "linux,initrd-end": u64_cells(initrd[1])}
    dt.leaf("chosen", chosen)
    for base, size in ram:
        dt.leaf(f"memory@{base:x}", {"device_type": "memory", "reg": u64_cells(base, size)})


def dump(path: str | None, blob: bytes) -> None:
    """--dump-dtb FILE: the device tree the guest gets, saved as it is."""
    if path:
        try:
            with open(path, "wb") as f:
                f.write(blob)
        except OSError as e:
            raise LkvmError(f"--dump-dtb {path}: {e.strerror}") from None
