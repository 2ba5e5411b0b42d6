"""The host bridge's DMA window (PAPR's TCE table): what a pseries kernel
maps there with H_PUT_TCE, H_PUT_TCE_INDIRECT and H_STUFF_TCE, and reads
back with H_GET_TCE.

Linux's pseries code takes every PCI device to have a window (it warns
without one) and clears the whole table as it sets the bus up.  Nothing in
lkvm translates through it: lkvm's virtio devices do not offer
VIRTIO_F_ACCESS_PLATFORM, so their drivers hand them guest physical
addresses; the table only keeps what the guest put, bounded by the
window's size.  KVM answers none of these calls here: it would only for a
table made with KVM_CREATE_SPAPR_TCE_64, which lkvm has no use for.
"""

import struct
import threading
from array import array

from kvm.errors import GuestError
from kvm.memory import GuestMemory

# The window: at bus address 0, 4 KiB pages, 256 MiB: 64K entries, 512 KiB
# here.  LIOBN names it in the hypercalls (QEMU's first PHB's number).
LIOBN = 0x80000000
TCE_SHIFT = 12
TCE_PAGE = 1 << TCE_SHIFT
WINDOW_SIZE = 256 << 20
ENTRIES = WINDOW_SIZE >> TCE_SHIFT
# A TCE: the real page number, and read and write permissions in bits 0-1;
# the bits between are reserved.
TCE_PERMISSIONS = 0x3
TCE_RESERVED = TCE_PAGE - 1 & ~TCE_PERMISSIONS
# H_PUT_TCE_INDIRECT's list: one 4 KiB page of big-endian TCEs at most.
INDIRECT_MAX = TCE_PAGE // 8


class TceTable:
    def __init__(self) -> None:
        self._entries = array("Q", bytes(8 * ENTRIES))
        self._lock = threading.Lock()

    def _first(self, liobn: int, ioba: int, npages: int) -> int | None:
        """The first entry of `npages` from bus address `ioba`, or None
        where they leave the window (or name another)."""
        if liobn != LIOBN or ioba % TCE_PAGE or npages < 1:
            return None
        first = ioba >> TCE_SHIFT
        return first if first + npages <= ENTRIES else None

    def get(self, liobn: int, ioba: int) -> int | None:
        first = self._first(liobn, ioba, 1)
        return None if first is None else self._entries[first]

    def put(self, liobn: int, ioba: int, tce: int, npages: int = 1) -> bool:
        """`tce` into `npages` entries (H_STUFF_TCE's; H_PUT_TCE's one);
        False, with nothing changed, for a bad window, range or TCE."""
        first = self._first(liobn, ioba, npages)
        if first is None or tce & TCE_RESERVED or tce >> 64:
            return False
        with self._lock:
            self._entries[first:first + npages] = array("Q", [tce]) * npages
        return True

    def put_indirect(self, mem: GuestMemory, liobn: int, ioba: int, tce_list: int,
                     npages: int) -> bool:
        """H_PUT_TCE_INDIRECT: `npages` TCEs from the page at `tce_list`
        in guest memory; all or none."""
        if npages > INDIRECT_MAX or tce_list % TCE_PAGE:
            return False
        first = self._first(liobn, ioba, npages)
        if first is None:
            return False
        try:
            tces = struct.unpack(f">{npages}Q", mem.read(tce_list, 8 * npages))
        except GuestError:
            return False
        if any(tce & TCE_RESERVED for tce in tces):
            return False
        with self._lock:
            self._entries[first:first + npages] = array("Q", tces)
        return True
