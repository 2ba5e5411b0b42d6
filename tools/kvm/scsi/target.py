"""A SCSI target of numbered logical units: it checks a CDB's length and
control byte, answers what the target answers for every LUN (REPORT
LUNS, REQUEST SENSE, INQUIRY of a LUN it lacks), hands the rest to the
LUN, and turns failures into CHECK CONDITION with sense data.

Sense is reported with the status (autosense), so none is ever pending:
REQUEST SENSE only says whether the LUN exists."""

from dataclasses import dataclass
from typing import Protocol

from include.uapi import lib
from scsi import cdb, inquiry
from scsi.cdb import be
from scsi.command import Command
from scsi.sense import (
    CHECK_CONDITION,
    GOOD,
    INVALID_FIELD_IN_CDB,
    INVALID_OPCODE,
    LUN_NOT_SUPPORTED,
    NO_SENSE,
    CheckCondition,
    Sense,
)

NACA_LINK = 0x05            # control byte flags this target does not do
DESC = 0x01                 # REQUEST SENSE: descriptor format
REPORT_SELECTS = (0, 1, 2)  # all LUNs, the well-known ones (none), both
REPORT_MIN = 16
PERIPHERAL, FLAT = 0x00, 0x40   # LUN address methods (SAM-5 §4.7)
MAX_LUNS = 0x4000               # the flat space's size


class Lun(Protocol):
    def execute(self, cmd: Command) -> int: ...
    def close(self) -> None: ...


@dataclass
class Result:
    status: int
    sense: bytes = b""
    moved: int = 0          # bytes through the data buffers
    written: int = 0        # of which into the data-in ones


def lun_entry(n: int) -> bytes:
    """A single-level LUN as REPORT LUNS lists it (and Linux's
    int_to_scsilun reads it): peripheral below 256, flat above."""
    method = PERIPHERAL if n < 256 else FLAT
    return bytes((method | n >> 8, n & 0xFF)).ljust(8, b"\0")


class Target:
    def __init__(self, luns: list[Lun]) -> None:
        if len(luns) > MAX_LUNS:
            raise ValueError(f"at most {MAX_LUNS} LUNs")
        self.luns = luns
        self.own = {cdb.REPORT_LUNS: self.report_luns, lib.REQUEST_SENSE: self.request_sense}

    def execute(self, lun: int | None, raw: bytes, data_out: list[memoryview],
                data_in: list[memoryview], out_size: int, in_size: int) -> Result:
        """Run `raw` (the whole CDB field) on LUN `lun`, None for an
        address that names none, with data buffers of the sizes given.
        Overrun passes through to the transport."""
        try:
            cmd = Command(self.cdb(raw), data_out, data_in, out_size, in_size)
            moved = self.dispatch(lun, cmd)
            return Result(GOOD, moved=moved, written=cmd.written)
        except CheckCondition as e:
            return Result(CHECK_CONDITION, e.sense.fixed())

    @staticmethod
    def cdb(raw: bytes) -> bytes:
        if not raw:
            raise CheckCondition(INVALID_OPCODE)
        size = cdb.length(raw[0])
        if size is None:
            raise CheckCondition(INVALID_OPCODE)
        if size > len(raw) or raw[size - 1] & NACA_LINK:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        return raw[:size]

    def dispatch(self, lun: int | None, cmd: Command) -> int:
        own = self.own.get(cmd.cdb[0])
        if own is not None:
            return own(lun, cmd)
        unit = self.unit(lun)
        if unit is not None:
            return unit.execute(cmd)
        if cmd.cdb[0] == lib.INQUIRY and not cmd.cdb[1] & inquiry.EVPD:
            # No LUN here, and none can be (peripheral qualifier 3).
            return cmd.reply(inquiry.standard(lib.TYPE_NO_LUN), be(cmd.cdb, 3, 2))
        raise CheckCondition(LUN_NOT_SUPPORTED)

    def unit(self, lun: int | None) -> Lun | None:
        return self.luns[lun] if lun is not None and lun < len(self.luns) else None

    def report_luns(self, lun: int | None, cmd: Command) -> int:
        select, allocation = cmd.cdb[2], be(cmd.cdb, 6, 4)
        if select not in REPORT_SELECTS or allocation < REPORT_MIN:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        listed = range(len(self.luns)) if select != 1 else range(0)
        entries = b"".join(lun_entry(n) for n in listed)
        return cmd.reply((len(entries)).to_bytes(4, "big") + bytes(4) + entries, allocation)

    def request_sense(self, lun: int | None, cmd: Command) -> int:
        sense: Sense = NO_SENSE if self.unit(lun) is not None else LUN_NOT_SUPPORTED
        if cmd.cdb[1] & ~DESC:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        data = sense.descriptor() if cmd.cdb[1] & DESC else sense.fixed()
        return cmd.reply(data, cmd.cdb[4])

    def close(self) -> None:
        for lun in self.luns:
            lun.close()
