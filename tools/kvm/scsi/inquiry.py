"""INQUIRY (SPC-4 §6.6): the standard data, and the vital product data
pages Linux's sd driver reads when page 0x00 lists them: the serial
number, the device identification, and the block limits, block device
characteristics and logical block provisioning pages (SBC-3 §6.6)."""

from collections.abc import Callable
from typing import Protocol

from include.uapi import lib
from kvm.version import VERSION
from scsi.cdb import be
from scsi.command import Command
from scsi.sense import INVALID_FIELD_IN_CDB, CheckCondition

VENDOR = b"LKVM".ljust(8)
PRODUCT = b"VIRTUAL DISK".ljust(16)
REVISION = VERSION.encode()[:4].ljust(4)
SPC4 = 0x06                 # the version field's value for SPC-4
HISUP_FORMAT2 = 0x12        # hierarchical LUNs; response data format 2
CMDQUE = 0x02               # commands are queued: Linux then tags them
STANDARD_SIZE = 36
EVPD = 0x01

# Device identification designator: ASCII, about the logical unit, T10
# vendor ID based (SPC-4 §7.8.6.4).
CODE_SET_ASCII = 0x02
DESIGNATOR_T10 = 0x01


class Unit(Protocol):
    """What the pages describe."""
    serial: bytes
    max_transfer: int           # blocks per READ/WRITE
    max_unmap: int              # blocks per UNMAP descriptor, 0 without UNMAP
    max_unmap_descriptors: int
    max_write_same: int         # blocks per WRITE SAME
    unmap_granularity: int      # blocks

    @property
    def thin(self) -> bool: ...


def standard(peripheral: int = lib.TYPE_DISK) -> bytes:
    head = bytes((peripheral, 0, SPC4, HISUP_FORMAT2, STANDARD_SIZE - 5, 0, 0, CMDQUE))
    return head + VENDOR + PRODUCT + REVISION


def serial_number(unit: Unit) -> bytes:
    return unit.serial


def identification(unit: Unit) -> bytes:
    t10 = VENDOR + unit.serial
    return bytes((CODE_SET_ASCII, DESIGNATOR_T10, 0, len(t10))) + t10


def block_limits(unit: Unit) -> bytes:
    page = bytearray(0x3C)
    page[0] = 0x01                                      # WSNZ: WRITE SAME of 0 blocks is bad
    page[4:8] = unit.max_transfer.to_bytes(4, "big")    # maximum transfer length
    page[16:20] = unit.max_unmap.to_bytes(4, "big")
    page[20:24] = unit.max_unmap_descriptors.to_bytes(4, "big")
    page[24:28] = unit.unmap_granularity.to_bytes(4, "big")
    page[32:40] = unit.max_write_same.to_bytes(8, "big")
    return bytes(page)


def characteristics(unit: Unit) -> bytes:
    page = bytearray(0x3C)
    page[0:2] = (1).to_bytes(2, "big")  # medium rotation rate 1: not rotating
    return bytes(page)


LBPU, LBPWS, LBPWS10, LBPRZ = 0x80, 0x40, 0x20, 0x04
THIN = 0x02


def provisioning(unit: Unit) -> bytes:
    """Thin when holes can be punched, which then read back as zeroes."""
    if not unit.thin:
        return bytes(4)
    return bytes((0, LBPU | LBPWS | LBPWS10 | LBPRZ, THIN, 0))


def supported(unit: Unit) -> bytes:
    return bytes(sorted(PAGES))


PAGES: dict[int, Callable[[Unit], bytes]] = {
    0x00: supported, 0x80: serial_number, 0x83: identification,
    0xB0: block_limits, 0xB1: characteristics, 0xB2: provisioning,
}


def inquiry(unit: Unit, cmd: Command) -> int:
    flags, page_code, allocation = cmd.cdb[1], cmd.cdb[2], be(cmd.cdb, 3, 2)
    if flags & ~EVPD or (not flags & EVPD and page_code):
        raise CheckCondition(INVALID_FIELD_IN_CDB)
    if not flags & EVPD:
        return cmd.reply(standard(), allocation)
    make = PAGES.get(page_code)
    if make is None:
        raise CheckCondition(INVALID_FIELD_IN_CDB)
    body = make(unit)
    head = bytes((lib.TYPE_DISK, page_code)) + len(body).to_bytes(2, "big")
    return cmd.reply(head + body, allocation)
