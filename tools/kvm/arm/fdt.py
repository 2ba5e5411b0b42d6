"""A flattened device tree, written in order with libfdt's sequential
writer (pylibfdt): what an arm64 kernel learns the machine from."""

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import libfdt

from kvm.errors import LkvmError

# Interrupt specifiers of the GIC binding (dt-bindings/interrupt-controller/
# arm-gic.h and irq.h): DT ABI, in no uapi header.
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_EDGE_RISING, IRQ_TYPE_LEVEL_HIGH = 1, 4

# Phandles of the nodes others point at.
PHANDLE_GIC, PHANDLE_APB_CLOCK = 1, 2

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
