"""MODE SENSE(6) and (10) (SPC-4 §6.11, §6.12): a header, a block
descriptor unless the initiator declines it, and the pages Linux's sd
reads: caching (the write cache is on, so it sends SYNCHRONIZE CACHE) and
control.  Nothing is changeable and nothing is saved."""

from typing import Protocol

from include.uapi import lib
from scsi.cdb import be
from scsi.command import Command
from scsi.sense import INVALID_FIELD_IN_CDB, SAVING_NOT_SUPPORTED, CheckCondition

CACHING, CONTROL, ALL_PAGES = 0x08, 0x0A, 0x3F
ALL_SUBPAGES = 0xFF
WCE = 0x04
PAGES = {
    CACHING: bytes((CACHING, 0x12, WCE)).ljust(0x14, b"\0"),
    CONTROL: bytes((CONTROL, 0x0A)).ljust(0x0C, b"\0"),
}
CURRENT, CHANGEABLE, DEFAULT, SAVED = range(4)

WP, DPOFUA = 0x80, 0x10     # device-specific parameter: write protected; FUA honoured
DBD, LLBAA = 0x08, 0x10     # CDB flags: no block descriptor; a long one
LONGLBA = 0x01
U32_MAX = 0xFFFFFFFF


class Unit(Protocol):
    blocks: int
    block_size: int
    readonly: bool


def pages(cmd: Command) -> bytes:
    control, subpage = cmd.cdb[2], cmd.cdb[3]
    kind, code = control >> 6, control & 0x3F
    if kind == SAVED:
        raise CheckCondition(SAVING_NOT_SUPPORTED)
    if code == ALL_PAGES and subpage in (0, ALL_SUBPAGES):
        chosen = list(PAGES.values())
    elif code in PAGES and subpage == 0:
        chosen = [PAGES[code]]
    else:
        raise CheckCondition(INVALID_FIELD_IN_CDB)
    if kind == CHANGEABLE:      # a mask of what MODE SELECT may change: nothing
        chosen = [p[:2].ljust(len(p), b"\0") for p in chosen]
    return b"".join(chosen)


def device_specific(unit: Unit) -> int:
    return DPOFUA | (WP if unit.readonly else 0)


def short_descriptor(unit: Unit) -> bytes:
    return min(unit.blocks, U32_MAX).to_bytes(4, "big") + unit.block_size.to_bytes(4, "big")


def long_descriptor(unit: Unit) -> bytes:
    return unit.blocks.to_bytes(8, "big") + bytes(4) + unit.block_size.to_bytes(4, "big")


def mode_sense_6(unit: Unit, cmd: Command) -> int:
    body = pages(cmd)
    desc = b"" if cmd.cdb[1] & DBD else short_descriptor(unit)
    head = bytes((3 + len(desc) + len(body), 0, device_specific(unit), len(desc)))
    return cmd.reply(head + desc + body, cmd.cdb[4])


def mode_sense_10(unit: Unit, cmd: Command) -> int:
    body = pages(cmd)
    flags = cmd.cdb[1]
    long = bool(flags & LLBAA)
    desc = b"" if flags & DBD else long_descriptor(unit) if long else short_descriptor(unit)
    head = (6 + len(desc) + len(body)).to_bytes(2, "big") + bytes(
        (0, device_specific(unit), LONGLBA if long and desc else 0, 0)) + \
        len(desc).to_bytes(2, "big")
    return cmd.reply(head + desc + body, be(cmd.cdb, 7, 2))


SENSE = {lib.MODE_SENSE: mode_sense_6, lib.MODE_SENSE_10: mode_sense_10}
