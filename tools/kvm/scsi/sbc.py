"""A direct-access logical unit (SBC-3) over a disk image: whatever
disk/core.py opens (raw files, block devices, qcow2, snapshots), in
512-byte blocks.

Every command is a row in one table of opcode -> handler.  Transfers go
straight between the image and guest memory, bounded by the limits the
Block Limits page announces, so no request makes lkvm hold more than a
WRITE SAME chunk of its own."""

import errno

from disk.core import Disk
from include.uapi import lib
from scsi import cdb, inquiry, mode
from scsi.cdb import be
from scsi.command import Command, Handler
from scsi.sense import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETERS,
    INVALID_OPCODE,
    LBA_OUT_OF_RANGE,
    PARAMETER_LIST_LENGTH,
    SPACE_ALLOCATION_FAILED,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    CheckCondition,
    Sense,
)

BLOCK = 512
MAX_TRANSFER = 0x4000           # blocks, 8 MiB: what one READ or WRITE may move
MAX_UNMAP = 0x400000            # blocks per UNMAP descriptor, 2 GiB
MAX_UNMAP_DESCRIPTORS = 64
MAX_WRITE_SAME = 0x400000       # blocks
UNMAP_GRANULARITY = 8           # a 4 KiB file system block: smaller holes stay data
PATTERN_CHUNK = 1 << 20         # bytes of a WRITE SAME pattern written at once

FUA = 0x08                      # READ/WRITE(10, 12, 16) flag: to the medium
WS_UNMAP, WS_ANCHOR, WS_NDOB = 0x08, 0x10, 0x01
UNMAP_HEADER, UNMAP_DESCRIPTOR = 8, 16
RC10_SIZE, RC16_SIZE = 8, 32
LBPME, LBPRZ = 0x80, 0x40       # READ CAPACITY(16) byte 14

# What a failed host call tells the initiator, by errno; else a medium error.
ERRNO_SENSE = {errno.EROFS: WRITE_PROTECTED, errno.ENOSPC: SPACE_ALLOCATION_FAILED,
               errno.EDQUOT: SPACE_ALLOCATION_FAILED}


class BlockLun:
    block_size = BLOCK
    max_transfer = MAX_TRANSFER
    max_unmap_descriptors = MAX_UNMAP_DESCRIPTORS
    max_write_same = MAX_WRITE_SAME
    unmap_granularity = UNMAP_GRANULARITY

    def __init__(self, disk: Disk, serial: str) -> None:
        self.disk = disk
        self.serial = serial.encode()
        self.blocks = disk.size // BLOCK
        self.readonly = disk.readonly
        self.commands: dict[int, Handler] = {
            lib.TEST_UNIT_READY: lambda cmd: 0,
            lib.INQUIRY: lambda cmd: inquiry.inquiry(self, cmd),
            lib.MODE_SENSE: lambda cmd: mode.mode_sense_6(self, cmd),
            lib.MODE_SENSE_10: lambda cmd: mode.mode_sense_10(self, cmd),
            lib.READ_CAPACITY: self.read_capacity_10,
            cdb.SERVICE_ACTION_IN_16: self.service_action_in,
            lib.READ_6: self.read, lib.READ_10: self.read, lib.READ_12: self.read,
            cdb.READ_16: self.read,
            lib.WRITE_6: self.write, lib.WRITE_10: self.write, lib.WRITE_12: self.write,
            cdb.WRITE_16: self.write,
            lib.SYNCHRONIZE_CACHE: self.synchronize, cdb.SYNCHRONIZE_CACHE_16: self.synchronize,
            lib.WRITE_SAME: self.write_same, cdb.WRITE_SAME_16: self.write_same,
            cdb.UNMAP: self.unmap,
        }

    @property
    def thin(self) -> bool:
        return self.disk.can_discard

    @property
    def max_unmap(self) -> int:
        return MAX_UNMAP if self.thin else 0

    def execute(self, cmd: Command) -> int:
        handler = self.commands.get(cmd.cdb[0])
        if handler is None:
            raise CheckCondition(INVALID_OPCODE)
        return handler(cmd)

    # Capacity.
    def read_capacity_10(self, cmd: Command) -> int:
        last = min(self.blocks - 1, 0xFFFFFFFF)    # all ones: ask READ CAPACITY(16)
        data = last.to_bytes(4, "big") + BLOCK.to_bytes(4, "big")
        return cmd.reply(data, RC10_SIZE)

    def service_action_in(self, cmd: Command) -> int:
        if cmd.cdb[1] & 0x1F != cdb.SAI_READ_CAPACITY_16:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        data = bytearray(RC16_SIZE)
        data[0:8] = (self.blocks - 1).to_bytes(8, "big")
        data[8:12] = BLOCK.to_bytes(4, "big")
        if self.thin:
            data[14] = LBPME | LBPRZ
        return cmd.reply(bytes(data), be(cmd.cdb, 10, 4))

    # Data.
    def extent(self, cmd: Command, limit: int) -> tuple[int, int]:
        """The command's (first block, block count), checked against the
        medium and `limit`."""
        lba, count = cdb.EXTENT[cmd.cdb[0]](cmd.cdb)
        if count > limit:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        if lba + count > self.blocks:
            raise CheckCondition(LBA_OUT_OF_RANGE)
        return lba, count

    def writable(self) -> None:
        if self.readonly:
            raise CheckCondition(WRITE_PROTECTED)

    def read(self, cmd: Command) -> int:
        lba, count = self.extent(cmd, MAX_TRANSFER)
        views = cmd.data_in_views(count * BLOCK)
        host_call(self.disk.readv, UNRECOVERED_READ_ERROR, views, lba * BLOCK)
        return count * BLOCK

    def write(self, cmd: Command) -> int:
        self.writable()
        lba, count = self.extent(cmd, MAX_TRANSFER)
        views = cmd.data_out_views(count * BLOCK)
        host_call(self.disk.writev, WRITE_ERROR, views, lba * BLOCK)
        if cmd.cdb[0] != lib.WRITE_6 and cmd.cdb[1] & FUA:
            host_call(self.disk.flush, WRITE_ERROR)
        return count * BLOCK

    def synchronize(self, cmd: Command) -> int:
        self.extent(cmd, self.blocks)   # a range past the end is still an error
        host_call(self.disk.flush, WRITE_ERROR)
        return 0

    # Provisioning.
    def write_same(self, cmd: Command) -> int:
        self.writable()
        flags = cmd.cdb[1]
        ndob = cmd.cdb[0] == cdb.WRITE_SAME_16 and flags & WS_NDOB
        lba, count = self.extent(cmd, MAX_WRITE_SAME)
        if count == 0 or flags & WS_ANCHOR:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        pattern = bytes(BLOCK) if ndob else cmd.parameters(BLOCK)
        offset, size = lba * BLOCK, count * BLOCK
        if not any(pattern) and (self.disk.can_zero or self.disk.can_discard):
            host_call(self.disk.write_zeroes, WRITE_ERROR, offset, size,
                      bool(flags & WS_UNMAP))
        else:
            self.fill(pattern, offset, size)
        return 0 if ndob else BLOCK

    def fill(self, pattern: bytes, offset: int, size: int) -> None:
        chunk = pattern * (PATTERN_CHUNK // BLOCK)
        for at in range(offset, offset + size, len(chunk)):
            n = min(len(chunk), offset + size - at)
            host_call(self.disk.writev, WRITE_ERROR, [memoryview(chunk)[:n]], at)

    def unmap(self, cmd: Command) -> int:
        if not self.thin:
            raise CheckCondition(INVALID_OPCODE)
        self.writable()
        size = be(cmd.cdb, 7, 2)
        if size == 0:
            return 0
        if size < UNMAP_HEADER:
            raise CheckCondition(PARAMETER_LIST_LENGTH)
        if size > UNMAP_HEADER + UNMAP_DESCRIPTOR * MAX_UNMAP_DESCRIPTORS:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        data = cmd.parameters(size)
        listed = min(be(data, 2, 2), size - UNMAP_HEADER) // UNMAP_DESCRIPTOR
        ranges = [(be(data, at, 8), be(data, at + 8, 4)) for at in
                  range(UNMAP_HEADER, UNMAP_HEADER + listed * UNMAP_DESCRIPTOR,
                        UNMAP_DESCRIPTOR)]
        for lba, count in ranges:       # all checked before any is done
            if lba + count > self.blocks:
                raise CheckCondition(LBA_OUT_OF_RANGE)
            if count > MAX_UNMAP:
                raise CheckCondition(INVALID_FIELD_IN_PARAMETERS)
        for lba, count in ranges:
            if count:
                host_call(self.disk.discard, WRITE_ERROR, lba * BLOCK, count * BLOCK)
        return size

    def close(self) -> None:
        self.disk.close()


def host_call(op: object, otherwise: Sense, *args: object) -> None:
    """Run a disk operation; a host error becomes the sense it means to
    the initiator."""
    try:
        op(*args)
    except OSError as e:
        raise CheckCondition(ERRNO_SENSE.get(e.errno, otherwise)) from None
