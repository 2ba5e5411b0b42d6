"""virtio-blk: a disk image as /dev/vdX.

A request is a header (type, sector) in the device-readable buffers, data
after it (writes) or in the device-writable buffers (reads), and a status
byte at the very end.  Bad requests get an error status; only a broken
ring stops the device.
"""

from include.uapi import ffi, lib
from kvm.cstruct import packer, to_bytes
from virtio.device import DEFAULT_QUEUE_SIZE, VirtioDevice
from virtio.iov import drop_last, take, total
from virtio.queue import Chain, Virtqueue

SECTOR = 512
OUTHDR = packer("struct virtio_blk_outhdr")
RANGE = packer("struct virtio_blk_discard_write_zeroes")
RANGE_SIZE = ffi.sizeof("struct virtio_blk_discard_write_zeroes")
MAX_RANGES = 16                 # discard/write-zeroes segments per request
MAX_RANGE_SECTORS = 0xFFFFFFFF  # a range's count is 32 bits wide anyway
SEG_MAX = DEFAULT_QUEUE_SIZE - 2  # room for the header and status


class Blk(VirtioDevice):
    device_id = lib.VIRTIO_ID_BLOCK
    name = "blk"

    def __init__(self, mem: object, disk: object, serial: str) -> None:
        super().__init__(mem)
        self.disk = disk
        self.serial = serial.encode()[:lib.VIRTIO_BLK_ID_BYTES]
        self.features = 1 << lib.VIRTIO_BLK_F_SEG_MAX | 1 << lib.VIRTIO_BLK_F_FLUSH
        if disk.readonly:
            self.features |= 1 << lib.VIRTIO_BLK_F_RO
        if disk.can_discard:
            self.features |= 1 << lib.VIRTIO_BLK_F_DISCARD
        if disk.can_discard or disk.can_zero:
            self.features |= 1 << lib.VIRTIO_BLK_F_WRITE_ZEROES
        self.config = bytearray(to_bytes(
            "struct virtio_blk_config", capacity=disk.size // SECTOR, seg_max=SEG_MAX,
            max_discard_sectors=MAX_RANGE_SECTORS, max_discard_seg=MAX_RANGES,
            discard_sector_alignment=1, max_write_zeroes_sectors=MAX_RANGE_SECTORS,
            max_write_zeroes_seg=MAX_RANGES, write_zeroes_may_unmap=int(disk.can_discard)))
        self.requests = {
            lib.VIRTIO_BLK_T_IN: self._read,
            lib.VIRTIO_BLK_T_OUT: self._write,
            lib.VIRTIO_BLK_T_FLUSH: self._flush,
            lib.VIRTIO_BLK_T_GET_ID: self._get_id,
            lib.VIRTIO_BLK_T_DISCARD: self._discard,
            lib.VIRTIO_BLK_T_WRITE_ZEROES: self._write_zeroes,
        }

    def process(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self._request(chain))

    def _request(self, chain: Chain) -> int:
        """Carry out one request; returns the bytes written to the guest."""
        status, data_in = drop_last(chain.writable)
        if status is None:
            return 0  # nowhere to say what happened: hand it back untouched
        hdr, data_out = take(chain.readable, OUTHDR.size)
        if hdr is None:
            status[0] = lib.VIRTIO_BLK_S_IOERR
            return 1
        kind, _, sector = OUTHDR.unpack(hdr)
        handler = self.requests.get(kind)
        if handler is None or (kind not in (lib.VIRTIO_BLK_T_IN, lib.VIRTIO_BLK_T_OUT) and
                               not self._offers(kind)):
            status[0] = lib.VIRTIO_BLK_S_UNSUPP
            return 1
        try:
            code, written = handler(sector, data_out, data_in)
        except OSError:
            code, written = lib.VIRTIO_BLK_S_IOERR, 0
        status[0] = code
        return written + 1

    def _offers(self, kind: int) -> bool:
        need = {lib.VIRTIO_BLK_T_FLUSH: lib.VIRTIO_BLK_F_FLUSH,
                lib.VIRTIO_BLK_T_DISCARD: lib.VIRTIO_BLK_F_DISCARD,
                lib.VIRTIO_BLK_T_WRITE_ZEROES: lib.VIRTIO_BLK_F_WRITE_ZEROES}.get(kind)
        return need is None or bool(self.features >> need & 1)

    def _in_disk(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector * SECTOR + length <= self.disk.size

    def _read(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        n = total(data_in)
        if not self._in_disk(sector, n):
            return lib.VIRTIO_BLK_S_IOERR, 0
        self.disk.readv(data_in, sector * SECTOR)
        return lib.VIRTIO_BLK_S_OK, n

    def _write(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        # A driver that ignores VIRTIO_BLK_F_RO still gets no write through.
        if self.disk.readonly or not self._in_disk(sector, total(data_out)):
            return lib.VIRTIO_BLK_S_IOERR, 0
        self.disk.writev(data_out, sector * SECTOR)
        return lib.VIRTIO_BLK_S_OK, 0

    def _flush(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        self.disk.flush()
        return lib.VIRTIO_BLK_S_OK, 0

    def _get_id(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        serial = self.serial.ljust(lib.VIRTIO_BLK_ID_BYTES, b"\0")
        written = 0
        for v in data_in:
            n = min(len(v), len(serial) - written)
            v[:n] = serial[written:written + n]
            written += n
        return lib.VIRTIO_BLK_S_OK, written

    def _ranges(self, data_out: list) -> list[tuple[int, int, int]] | None:
        size = total(data_out)
        if not size or size % RANGE_SIZE or size // RANGE_SIZE > MAX_RANGES:
            return None
        raw, _ = take(data_out, size)
        ranges = [RANGE.unpack_from(raw, i) for i in range(0, len(raw), RANGE_SIZE)]
        if not all(self._in_disk(s, n * SECTOR) for s, n, _ in ranges):
            return None
        return ranges

    def _discard(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        ranges = self._ranges(data_out)
        if ranges is None:
            return lib.VIRTIO_BLK_S_IOERR, 0
        if any(flags for _, _, flags in ranges):
            return lib.VIRTIO_BLK_S_UNSUPP, 0
        for s, n, _ in ranges:
            self.disk.discard(s * SECTOR, n * SECTOR)
        return lib.VIRTIO_BLK_S_OK, 0

    def _write_zeroes(self, sector: int, data_out: list, data_in: list) -> tuple[int, int]:
        ranges = self._ranges(data_out)
        if ranges is None:
            return lib.VIRTIO_BLK_S_IOERR, 0
        unmap = lib.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        if any(flags & ~unmap for _, _, flags in ranges):
            return lib.VIRTIO_BLK_S_UNSUPP, 0
        for s, n, flags in ranges:
            self.disk.write_zeroes(s * SECTOR, n * SECTOR, bool(flags & unmap))
        return lib.VIRTIO_BLK_S_OK, 0

    def close(self) -> None:
        self.disk.close()
