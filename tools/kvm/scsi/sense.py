"""How a SCSI command fails: CHECK CONDITION with sense data (SPC-4
§4.5), a sense key and an additional sense code and qualifier.

A command handler raises CheckCondition; the target turns it into the
status byte and the sense bytes, in the format the initiator asked for.
"""

from dataclasses import dataclass

from include.uapi import lib

# SAM-5 status codes.  libc's <scsi/scsi.h> spells them shifted right by
# one (its CHECK_CONDITION is 0x01), as SCSI-1 drivers masked them.
GOOD = 0x00
CHECK_CONDITION = 0x02

FIXED_CURRENT = 0x70        # response codes: fixed and descriptor format
DESCRIPTOR_CURRENT = 0x72
FIXED_SIZE = 18
DESCRIPTOR_SIZE = 8


@dataclass(frozen=True)
class Sense:
    key: int
    asc: int
    ascq: int = 0

    def fixed(self) -> bytes:
        out = bytearray(FIXED_SIZE)
        out[0], out[2], out[7] = FIXED_CURRENT, self.key, FIXED_SIZE - 8
        out[12], out[13] = self.asc, self.ascq
        return bytes(out)

    def descriptor(self) -> bytes:
        return bytes((DESCRIPTOR_CURRENT, self.key, self.asc, self.ascq, 0, 0, 0, 0))


# The additional sense codes this target reports (SPC-4 annex D).
NO_SENSE = Sense(lib.NO_SENSE, 0x00)
INVALID_OPCODE = Sense(lib.ILLEGAL_REQUEST, 0x20)
LBA_OUT_OF_RANGE = Sense(lib.ILLEGAL_REQUEST, 0x21)
INVALID_FIELD_IN_CDB = Sense(lib.ILLEGAL_REQUEST, 0x24)
LUN_NOT_SUPPORTED = Sense(lib.ILLEGAL_REQUEST, 0x25)
INVALID_FIELD_IN_PARAMETERS = Sense(lib.ILLEGAL_REQUEST, 0x26)
PARAMETER_LIST_LENGTH = Sense(lib.ILLEGAL_REQUEST, 0x1A)
SAVING_NOT_SUPPORTED = Sense(lib.ILLEGAL_REQUEST, 0x39)
WRITE_PROTECTED = Sense(lib.DATA_PROTECT, 0x27)
SPACE_ALLOCATION_FAILED = Sense(lib.DATA_PROTECT, 0x27, 0x07)
UNRECOVERED_READ_ERROR = Sense(lib.MEDIUM_ERROR, 0x11)
WRITE_ERROR = Sense(lib.MEDIUM_ERROR, 0x0C)


class CheckCondition(Exception):
    def __init__(self, sense: Sense) -> None:
        super().__init__(sense)
        self.sense = sense
