"""MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and
pending bits in a BAR, and delivery through KVM: each vector is a GSI with
an MSI route and an irqfd, so raising it is one eventfd write.  A vector
live (MSI-X on, neither it nor the function masked) can be raised by
others through its irqfd (vhost): its route follows the table as the
driver writes it, and `changed` tells the device when a vector may have
come alive, died or moved."""

import os
import struct
import threading
from collections.abc import Callable

from include.uapi import lib

ENTRY = lib.PCI_MSIX_ENTRY_SIZE
CTRL = lib.PCI_MSIX_ENTRY_VECTOR_CTRL
MASKBIT = lib.PCI_MSIX_ENTRY_CTRL_MASKBIT
CAP = struct.Struct("<HII")  # message control, table offset|BIR, PBA offset|BIR


class Msix:
    def __init__(self, pci: object, vectors: int, bar: int, routing: object,
                 irqfd: object) -> None:
        self.vectors = vectors
        self.table = bytearray(ENTRY * vectors)
        for v in range(vectors):
            self.table[ENTRY * v + CTRL] = MASKBIT  # masked until the driver says
        self.pending = bytearray(-(-vectors // 64) * 8)
        self.pba_offset = len(self.table)
        self.size = max(4096, 1 << (self.pba_offset + len(self.pending) - 1).bit_length())
        self.pci = pci
        self.cap = pci.add_capability(lib.PCI_CAP_ID_MSIX,
                                      CAP.pack(vectors - 1, bar, self.pba_offset | bar))
        self.control = self.cap + lib.PCI_MSIX_FLAGS
        self.routing = routing
        self.gsis = [routing.add_msi() for _ in range(vectors)]
        self.irqfds = [irqfd(gsi) for gsi in self.gsis]
        self.lock = threading.Lock()
        self.changed: Callable[[], None] = lambda: None

    def _flags(self) -> int:
        return self.pci.read_config(self.control, 2)

    @property
    def enabled(self) -> bool:
        return bool(self._flags() & lib.PCI_MSIX_FLAGS_ENABLE)

    def _masked(self, v: int) -> bool:
        return bool(self._flags() & lib.PCI_MSIX_FLAGS_MASKALL or
                    self.table[ENTRY * v + CTRL] & MASKBIT)

    def fire(self, vector: int) -> None:
        """Raise `vector`, or leave it pending while it is masked."""
        if not 0 <= vector < self.vectors:
            return  # VIRTIO_MSI_NO_VECTOR or junk: no interrupt
        with self.lock:
            if self._masked(vector):
                self.pending[vector // 8] |= 1 << vector % 8
                return
            self._send(vector)

    def irqfd(self, vector: int) -> int | None:
        """The irqfd that raises `vector` as the table says now, or None
        while it is not live."""
        with self.lock:
            if not 0 <= vector < self.vectors or not self.enabled or self._masked(vector):
                return None
            self._route(vector)
            return self.irqfds[vector]

    def _route(self, v: int) -> None:
        addr_lo, addr_hi, data = struct.unpack_from("<III", self.table, ENTRY * v)
        self.routing.set_msi(self.gsis[v], addr_hi << 32 | addr_lo, data)

    def _send(self, v: int) -> None:
        self._route(v)
        os.eventfd_write(self.irqfds[v], 1)

    def _deliver_pending(self) -> None:
        for v in range(self.vectors):
            if self.pending[v // 8] >> v % 8 & 1 and not self._masked(v):
                self.pending[v // 8] &= ~(1 << v % 8)
                self._send(v)

    def write_control(self, value: int) -> None:
        """The driver wrote message control: only enable and mask-all."""
        keep = lib.PCI_MSIX_FLAGS_ENABLE | lib.PCI_MSIX_FLAGS_MASKALL
        with self.lock:
            flags = self._flags() & ~keep | value & keep
            self.pci.config[self.control:self.control + 2] = flags.to_bytes(2, "little")
            self._deliver_pending()
        self.changed()

    # The BAR holding table and pending bits.
    def read(self, offset: int, size: int) -> int:
        region, off = (self.table, offset) if offset < self.pba_offset else \
            (self.pending, offset - self.pba_offset)
        if off + size > len(region) or size not in (4, 8):
            return 0
        return int.from_bytes(region[off:off + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset + size > len(self.table) or size not in (4, 8):
            return  # pending bits are read-only
        with self.lock:
            self.table[offset:offset + size] = value.to_bytes(size, "little")
            self._deliver_pending()
        self.changed()     # outside the lock: the device's takes this one
