"""virtio-scsi and lkvm's SCSI target driven through the mock driver as
Linux's virtio_scsi and sd drive them, then as a hostile guest would:
every command in a table, bad LUNs, CDBs cut short, transfers larger
than their buffers or the limits, parameter lists that lie."""

import itertools
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disk.core import open_disk
from include.uapi import ffi, lib
from scsi import cdb, sbc, sense
from virtio.mock import Driver, mock_memory
from virtio.scsi import CDB_OFFSET, CONTROL, REQUEST, RESP, SENSE_OFFSET, Scsi

MIB = 1 << 20
BLOCKS = 8 * MIB // 512
RESP_SIZE = ffi.sizeof("struct virtio_scsi_cmd_resp")


def lun_field(n=0, target=0):
    return bytes((1, target, 0x40 | n >> 8, n & 0xFF, 0, 0, 0, 0))


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"lun{i}.img"
        p.write_bytes(bytes([i + 1]) * (8 * MIB))
        paths.append(p)
    return paths


@pytest.fixture
def adapter(images):
    dev = Scsi(mock_memory(), [sbc.BlockLun(open_disk(str(images[0])), "lkvm-scsi-0"),
                               sbc.BlockLun(open_disk(str(images[1]), readonly=True),
                                            "lkvm-scsi-1")])
    queues = Driver(dev).start()
    yield dev, queues
    dev.close()


class Reply:
    def __init__(self, written, data):
        (self.sense_len, self.resid, _, self.status,
         self.response) = RESP.unpack_from(data)
        self.sense = data[SENSE_OFFSET:SENSE_OFFSET + self.sense_len]
        self.data = data[RESP_SIZE:]
        self.written = written

    @property
    def key_asc(self):
        return (self.sense[2], self.sense[12], self.sense[13]) if self.sense else None


def run(adapter, cdb_bytes, lun=0, out=b"", in_len=0, target=0, resp_len=RESP_SIZE):
    """One command; its Reply, or (written, bytes) with a response
    buffer shorter than the default one."""
    _, queues = adapter
    q = queues[REQUEST]
    hdr = lun_field(lun, target) + bytes(CDB_OFFSET - 8) + cdb_bytes.ljust(32, b"\0")
    q.add([hdr, *([out] if out else [])], [resp_len, *([in_len] if in_len else [])])
    q.kick()
    ((_, written, data),) = q.collect()
    return Reply(written, data) if resp_len >= RESP_SIZE else (written, data)


def ok(r):
    assert (r.response, r.status) == (lib.VIRTIO_SCSI_S_OK, sense.GOOD), r.key_asc
    return r


def check(r, s):
    assert r.response == lib.VIRTIO_SCSI_S_OK
    assert r.status == sense.CHECK_CONDITION
    assert r.key_asc == (s.key, s.asc, s.ascq)


def rw10(op, lba, count, flags=0):
    return struct.pack(">BBIBHB", op, flags, lba, 0, count, 0)


def rw16(op, lba, count, flags=0):
    return struct.pack(">BBQIBB", op, flags, lba, count, 0, 0)


def rw6(op, lba, count):
    return struct.pack(">BBHBB", op, lba >> 16, lba & 0xFFFF, count, 0)


def rw12(op, lba, count):
    return struct.pack(">BBIIBB", op, 0, lba, count, 0, 0)


def inquiry(evpd=0, page=0, alloc=255):
    return struct.pack(">BBBHB", lib.INQUIRY, evpd, page, alloc, 0)


# Linux's probe: INQUIRY, REPORT LUNS, the VPD pages, capacity, modes.
def test_standard_inquiry(adapter):
    r = ok(run(adapter, inquiry(alloc=36), in_len=36))
    assert r.data[0] == lib.TYPE_DISK and r.data[2] == 6 and r.data[7] & 0x02
    assert r.data[8:16] == b"LKVM    " and r.resid == 0
    assert r.written == RESP_SIZE + 36


def test_inquiry_cut_to_its_allocation_length(adapter):
    r = ok(run(adapter, inquiry(alloc=5), in_len=64))
    assert len(r.data) == 64 and r.data[5:] == bytes(59) and r.resid == 59


def test_vpd_pages_linux_asks_for(adapter):
    pages = ok(run(adapter, inquiry(1, 0), in_len=255)).data
    listed = pages[4:4 + pages[3]]
    assert list(listed) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    serial = ok(run(adapter, inquiry(1, 0x80), in_len=255)).data
    assert serial[4:4 + serial[3]] == b"lkvm-scsi-0"
    ident = ok(run(adapter, inquiry(1, 0x83), in_len=255)).data
    assert ident[4:8] == bytes((2, 1, 0, 19)) and ident[8:27] == b"LKVM    lkvm-scsi-0"
    limits = ok(run(adapter, inquiry(1, 0xB0), in_len=255)).data
    assert struct.unpack_from(">H", limits, 2)[0] == 0x3C
    assert struct.unpack_from(">I", limits, 8)[0] == sbc.MAX_TRANSFER
    assert struct.unpack_from(">Q", limits, 36)[0] == sbc.MAX_WRITE_SAME
    chars = ok(run(adapter, inquiry(1, 0xB1), in_len=255)).data
    assert chars[4:6] == b"\0\1"                    # not rotating
    prov = ok(run(adapter, inquiry(1, 0xB2), in_len=255)).data
    assert prov[5] == (0xE4 if adapter[0].target.luns[0].thin else 0)


def test_unknown_vpd_page_and_bad_inquiry(adapter):
    check(run(adapter, inquiry(1, 0x89), in_len=255), sense.INVALID_FIELD_IN_CDB)
    check(run(adapter, inquiry(0, 0x80), in_len=255), sense.INVALID_FIELD_IN_CDB)
    check(run(adapter, inquiry(2, 0), in_len=255), sense.INVALID_FIELD_IN_CDB)


def report_luns(select, alloc):
    return struct.pack(">BBBHBIBB", cdb.REPORT_LUNS, 0, select, 0, 0, alloc, 0, 0)


def test_report_luns(adapter):
    r = ok(run(adapter, report_luns(0, 512), in_len=512))
    assert r.data[:8] == b"\0\0\0\x10\0\0\0\0"
    assert r.data[8:24] == bytes(8) + b"\0\1" + bytes(6)
    r = ok(run(adapter, report_luns(1, 64), in_len=64))
    assert r.data[:8] == bytes(8)                   # no well-known LUNs
    check(run(adapter, report_luns(0, 8), in_len=512), sense.INVALID_FIELD_IN_CDB)
    check(run(adapter, report_luns(7, 64), in_len=512), sense.INVALID_FIELD_IN_CDB)


def test_read_capacity_10_and_16(adapter):
    r = ok(run(adapter, bytes((lib.READ_CAPACITY,)) + bytes(9), in_len=8))
    assert struct.unpack(">II", r.data) == (BLOCKS - 1, 512)
    rc16 = struct.pack(">BBQIBB", cdb.SERVICE_ACTION_IN_16, cdb.SAI_READ_CAPACITY_16, 0, 32, 0, 0)
    r = ok(run(adapter, rc16, in_len=32))
    assert struct.unpack_from(">QI", r.data) == (BLOCKS - 1, 512)
    assert bool(r.data[14] & 0x80) == adapter[0].target.luns[0].thin    # LBPME
    bad = struct.pack(">BBQIBB", cdb.SERVICE_ACTION_IN_16, 0x11, 0, 32, 0, 0)
    check(run(adapter, bad, in_len=32), sense.INVALID_FIELD_IN_CDB)


@pytest.mark.parametrize("read,write,pack", [
    (lib.READ_6, lib.WRITE_6, rw6), (lib.READ_10, lib.WRITE_10, rw10),
    (lib.READ_12, lib.WRITE_12, rw12), (cdb.READ_16, cdb.WRITE_16, rw16)])
def test_read_and_write_every_size(adapter, images, read, write, pack):
    payload = os.urandom(4096)
    r = ok(run(adapter, pack(write, 100, 8), out=payload))
    assert r.resid == 0 and r.written == RESP_SIZE
    assert images[0].read_bytes()[100 * 512:100 * 512 + 4096] == payload
    r = ok(run(adapter, pack(read, 100, 8), in_len=4096))
    assert r.data == payload and r.written == RESP_SIZE + 4096


def test_transfers_spanning_many_descriptors(adapter, images):
    """A command's data in segments of any size, as many as seg_max
    allows, whole or with buffers to spare: the bytes land in order and
    the residual is what was left over."""
    payload = os.urandom(16 * 512)
    cuts = [0, 1, 512, 513, 4096, 4097, 5000, 8191, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(cuts)]
    _, queues = adapter
    q = queues[REQUEST]
    hdr = lun_field() + bytes(CDB_OFFSET - 8) + rw10(lib.WRITE_10, 40, 16).ljust(32, b"\0")
    q.add([hdr, *pieces, b"spare"], [RESP_SIZE], indirect=True)
    q.kick()
    ((_, _, data),) = q.collect()
    assert ok(Reply(RESP_SIZE, data)).resid == 5
    assert images[0].read_bytes()[40 * 512:56 * 512] == payload
    for spare in (0, 700):
        sizes = [len(p) for p in pieces] + ([spare] if spare else [])
        hdr = lun_field() + bytes(CDB_OFFSET - 8) + rw10(lib.READ_10, 40, 16).ljust(32, b"\0")
        q.add([hdr], [RESP_SIZE, *sizes])
        q.kick()
        ((_, written, data),) = q.collect()
        r = ok(Reply(written, data))
        assert r.resid == spare and written == RESP_SIZE + len(payload)
        assert r.data[:len(payload)] == payload


def test_read_6_length_0_means_256(adapter):
    r = ok(run(adapter, rw6(lib.READ_6, 0, 0), in_len=256 * 512))
    assert len(r.data) == 256 * 512 and r.data == b"\1" * (256 * 512)


def test_fua_write_and_synchronize_cache(adapter, images):
    ok(run(adapter, rw10(lib.WRITE_10, 0, 1, flags=sbc.FUA), out=b"f" * 512))
    ok(run(adapter, rw10(lib.SYNCHRONIZE_CACHE, 0, 0)))
    ok(run(adapter, rw16(cdb.SYNCHRONIZE_CACHE_16, 0, 0)))
    assert images[0].read_bytes()[:512] == b"f" * 512


def test_test_unit_ready_and_request_sense(adapter):
    ok(run(adapter, bytes(6)))
    r = ok(run(adapter, bytes((lib.REQUEST_SENSE, 0, 0, 0, 252, 0)), in_len=252))
    assert r.data[0] == 0x70 and r.data[2] == lib.NO_SENSE and r.resid == 252 - 18
    r = ok(run(adapter, bytes((lib.REQUEST_SENSE, 1, 0, 0, 252, 0)), in_len=252))
    assert r.data[:4] == bytes((0x72, lib.NO_SENSE, 0, 0))


def mode_sense_6(page, pc=0, dbd=0, alloc=255):
    return bytes((lib.MODE_SENSE, dbd, pc << 6 | page, 0, alloc, 0))


def mode_sense_10(page, pc=0, flags=0, alloc=255):
    return struct.pack(">BBBBHBHB", lib.MODE_SENSE_10, flags, pc << 6 | page, 0, 0, 0, alloc, 0)


def test_mode_sense(adapter):
    r = ok(run(adapter, mode_sense_6(0x3F), in_len=255))
    assert r.data[0] == 3 + 8 + 20 + 12 and r.data[3] == 8 and not r.data[2] & 0x80
    assert struct.unpack_from(">I", r.data, 4)[0] == BLOCKS
    caching = r.data[12:32]
    assert caching[:3] == bytes((0x08, 0x12, 0x04))                      # WCE
    r = ok(run(adapter, mode_sense_6(0x08, dbd=0x08), in_len=255))
    assert r.data[3] == 0 and r.data[4] == 0x08
    r = ok(run(adapter, mode_sense_10(0x0A, flags=0x10), in_len=255))
    assert struct.unpack_from(">H", r.data, 6)[0] == 16 and r.data[4] & 1
    assert struct.unpack_from(">Q", r.data, 8)[0] == BLOCKS and r.data[24] == 0x0A
    r = ok(run(adapter, mode_sense_6(0x08, pc=1, dbd=0x08), in_len=255))
    assert r.data[6:24] == bytes(18)                                     # nothing changeable
    check(run(adapter, mode_sense_6(0x08, pc=3), in_len=255), sense.SAVING_NOT_SUPPORTED)
    check(run(adapter, mode_sense_6(0x19), in_len=255), sense.INVALID_FIELD_IN_CDB)
    r = ok(run(adapter, mode_sense_6(0x3F), lun=1, in_len=255))
    assert r.data[2] & 0x80                                              # write protected


def test_unmap_and_write_same_punch_holes(adapter, images):
    lun = adapter[0].target.luns[0]
    if not lun.thin:
        pytest.skip("the file system here punches no holes")
    before = os.stat(images[0]).st_blocks
    params = struct.pack(">HHI", 22, 16, 0) + struct.pack(">QII", 0, 2048, 0)
    ok(run(adapter, struct.pack(">BBIBHB", cdb.UNMAP, 0, 0, 0, len(params), 0), out=params))
    assert images[0].read_bytes()[:MIB] == bytes(MIB)
    assert os.stat(images[0]).st_blocks < before
    ws = rw16(cdb.WRITE_SAME_16, 4096, 2048, flags=sbc.WS_UNMAP | sbc.WS_NDOB)
    ok(run(adapter, ws))
    assert images[0].read_bytes()[2 * MIB:3 * MIB] == bytes(MIB)


def test_write_same_with_a_pattern(adapter, images):
    pattern = bytes(range(256)) * 2
    r = ok(run(adapter, rw10(lib.WRITE_SAME, 10, 3000), out=pattern))
    assert images[0].read_bytes()[10 * 512:3010 * 512] == pattern * 3000
    assert r.resid == 0
    check(run(adapter, rw10(lib.WRITE_SAME, 10, 0), out=pattern), sense.INVALID_FIELD_IN_CDB)


# Hostile requests.
def test_bad_target_and_missing_luns(adapter):
    r = run(adapter, inquiry(), target=1, in_len=255)
    assert r.response == lib.VIRTIO_SCSI_S_BAD_TARGET
    r = run(adapter, bytes(6), lun=5)
    check(r, sense.LUN_NOT_SUPPORTED)
    r = ok(run(adapter, inquiry(), lun=5, in_len=36))
    assert r.data[0] == lib.TYPE_NO_LUN
    r = ok(run(adapter, bytes((lib.REQUEST_SENSE, 0, 0, 0, 18, 0)), lun=5, in_len=18))
    assert (r.data[2], r.data[12]) == (lib.ILLEGAL_REQUEST, 0x25)
    check(run(adapter, rw10(lib.READ_10, 0, 1), lun=5, in_len=512), sense.LUN_NOT_SUPPORTED)


def test_lun_field_with_more_levels_names_no_lun(adapter):
    _, queues = adapter
    q = queues[REQUEST]
    hdr = bytes((1, 0, 0x40, 0, 0, 1, 0, 0)) + bytes(CDB_OFFSET - 8) + bytes(32)
    q.add([hdr], [RESP_SIZE])
    q.kick()
    ((_, _, data),) = q.collect()
    check(Reply(0, data), sense.LUN_NOT_SUPPORTED)


def test_out_of_range_and_oversized_transfers(adapter):
    check(run(adapter, rw10(lib.READ_10, BLOCKS - 1, 2), in_len=1024), sense.LBA_OUT_OF_RANGE)
    check(run(adapter, rw16(cdb.READ_16, 2**64 - 1, 1), in_len=512), sense.LBA_OUT_OF_RANGE)
    check(run(adapter, rw16(cdb.WRITE_16, 2**63, 1), out=bytes(512)), sense.LBA_OUT_OF_RANGE)
    check(run(adapter, rw16(cdb.WRITE_16, 0, 2**32 - 1), out=bytes(512)),
          sense.INVALID_FIELD_IN_CDB)
    too_many = sbc.MAX_TRANSFER + 1
    check(run(adapter, rw16(cdb.READ_16, 0, too_many), in_len=512), sense.INVALID_FIELD_IN_CDB)


def test_buffers_shorter_than_the_cdb_says_are_an_overrun(adapter, images):
    r = run(adapter, rw10(lib.READ_10, 0, 8), in_len=512)
    assert r.response == lib.VIRTIO_SCSI_S_OVERRUN and r.written == RESP_SIZE
    r = run(adapter, rw10(lib.WRITE_10, 0, 8), out=b"x" * 512)
    assert r.response == lib.VIRTIO_SCSI_S_OVERRUN
    assert images[0].read_bytes()[:512] == b"\1" * 512          # nothing written
    r = run(adapter, inquiry(alloc=36), in_len=10)
    assert r.response == lib.VIRTIO_SCSI_S_OVERRUN


def test_unknown_opcodes_and_cut_cdbs(adapter):
    for op in (0x02, 0x0B, lib.MODE_SELECT, 0xA3, 0xC0, 0x7F, 0xFF):
        check(run(adapter, bytes((op,)) + bytes(15), in_len=64), sense.INVALID_OPCODE)
    check(run(adapter, bytes(5) + b"\x01"), sense.INVALID_FIELD_IN_CDB)      # LINK
    dev, queues = adapter
    dev.write_config(24, 4, 10)                                             # cdb_size 10
    q = queues[REQUEST]
    hdr = lun_field() + bytes(CDB_OFFSET - 8) + rw16(cdb.READ_16, 0, 1)[:10]
    q.add([hdr], [RESP_SIZE, 512])
    q.kick()
    ((_, _, data),) = q.collect()
    check(Reply(0, data), sense.INVALID_FIELD_IN_CDB)


def test_short_headers(adapter):
    written, data = run(adapter, inquiry(), resp_len=RESP_SIZE - 1)
    assert written == 0                     # no room for the response: untouched
    _, queues = adapter
    q = queues[REQUEST]
    q.add([lun_field()], [RESP_SIZE])
    q.kick()
    ((_, written, data),) = q.collect()
    assert Reply(written, data).response == lib.VIRTIO_SCSI_S_FAILURE


def test_driver_set_sizes_are_bounded(adapter):
    dev, _ = adapter
    dev.write_config(20, 4, 2**32 - 1)
    dev.write_config(24, 4, 2**20)
    assert dev.read_config(20, 4) == 96 and dev.read_config(24, 4) == 32
    dev.write_config(20, 4, 18)
    written, data = run(adapter, bytes(6), lun=7, resp_len=SENSE_OFFSET + 18)
    assert written == SENSE_OFFSET + 18
    assert RESP.unpack_from(data)[0] == 18 and data[SENSE_OFFSET + 12] == 0x25
    dev.reset()
    assert dev.read_config(20, 4) == 96


def test_writes_to_a_read_only_lun(adapter, images):
    check(run(adapter, rw10(lib.WRITE_10, 0, 1), lun=1, out=bytes(512)), sense.WRITE_PROTECTED)
    check(run(adapter, rw10(lib.WRITE_SAME, 0, 1), lun=1, out=bytes(512)),
          sense.WRITE_PROTECTED)
    assert images[1].read_bytes()[:512] == b"\2" * 512


def test_unmap_parameter_lists_that_lie(adapter):
    if not adapter[0].target.luns[0].thin:
        pytest.skip("the file system here punches no holes")

    def unmap(params, length=None):
        n = len(params) if length is None else length
        return run(adapter, struct.pack(">BBIBHB", cdb.UNMAP, 0, 0, 0, n, 0), out=params)

    check(unmap(b"\0" * 4), sense.PARAMETER_LIST_LENGTH)
    huge = 8 + 16 * (sbc.MAX_UNMAP_DESCRIPTORS + 1)
    check(unmap(bytes(huge)), sense.INVALID_FIELD_IN_CDB)
    past = struct.pack(">HHI", 22, 16, 0) + struct.pack(">QII", BLOCKS - 1, 2, 0)
    check(unmap(past), sense.LBA_OUT_OF_RANGE)
    assert unmap(past[:8], length=24).response == lib.VIRTIO_SCSI_S_OVERRUN
    # A descriptor length past the list: only what the list holds counts.
    ok(unmap(struct.pack(">HHI", 0xFFFF, 0xFFF0, 0) + struct.pack(">QII", 0, 1, 0)))


def test_task_management_and_events(adapter):
    dev, queues = adapter
    q = queues[CONTROL]
    for subtype, lun, want in [
            (lib.VIRTIO_SCSI_T_TMF_ABORT_TASK, lun_field(), lib.VIRTIO_SCSI_S_OK),
            (lib.VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun_field(), lib.VIRTIO_SCSI_S_OK),
            (99, lun_field(), lib.VIRTIO_SCSI_S_FUNCTION_REJECTED),
            (lib.VIRTIO_SCSI_T_TMF_ABORT_TASK, lun_field(target=3),
             lib.VIRTIO_SCSI_S_BAD_TARGET)]:
        q.add([struct.pack("<II", lib.VIRTIO_SCSI_T_TMF, subtype) + lun + bytes(8)], [1])
        q.kick()
        ((_, written, data),) = q.collect()
        assert (written, data) == (1, bytes((want,)))
    q.add([struct.pack("<I", lib.VIRTIO_SCSI_T_AN_QUERY) + lun_field() + bytes(4)], [5])
    q.kick()
    ((_, written, data),) = q.collect()
    assert (written, data) == (5, bytes(5))
    q.add([struct.pack("<I", 77)], [8])                 # an unknown type
    q.kick()
    assert [w for _, w, _ in q.collect()] == [0]
    events = queues[1]
    events.add([], [16])
    events.kick()
    assert events.collect() == []                       # held for events never sent


# Every command the target knows, once, as Linux sends it: (CDB, data-out,
# data-in length, data-in bytes expected from the start of the buffer).
RC16 = struct.pack(">BBQIBB", cdb.SERVICE_ACTION_IN_16, cdb.SAI_READ_CAPACITY_16, 0, 32, 0, 0)
TABLE = {
    lib.TEST_UNIT_READY: (bytes(6), b"", 0, b""),
    lib.REQUEST_SENSE: (bytes((lib.REQUEST_SENSE, 0, 0, 0, 18, 0)), b"", 18, b"\x70"),
    lib.INQUIRY: (inquiry(alloc=36), b"", 36, b"\0\0\6"),
    cdb.REPORT_LUNS: (report_luns(0, 16), b"", 16, b"\0\0\0\x10"),
    lib.READ_CAPACITY: (bytes((lib.READ_CAPACITY,)) + bytes(9), b"", 8,
                        (BLOCKS - 1).to_bytes(4, "big")),
    cdb.SERVICE_ACTION_IN_16: (RC16, b"", 32, (BLOCKS - 1).to_bytes(8, "big")),
    lib.MODE_SENSE: (mode_sense_6(0x08, dbd=0x08), b"", 24, b"\x17"),
    lib.MODE_SENSE_10: (mode_sense_10(0x08, flags=0x08), b"", 28, b"\0\x1a"),
    lib.READ_6: (rw6(lib.READ_6, 1, 1), b"", 512, b"\1" * 512),
    lib.READ_10: (rw10(lib.READ_10, 1, 1), b"", 512, b"\1" * 512),
    lib.READ_12: (rw12(lib.READ_12, 1, 1), b"", 512, b"\1" * 512),
    cdb.READ_16: (rw16(cdb.READ_16, 1, 1), b"", 512, b"\1" * 512),
    lib.WRITE_6: (rw6(lib.WRITE_6, 1, 1), bytes(512), 0, b""),
    lib.WRITE_10: (rw10(lib.WRITE_10, 1, 1), bytes(512), 0, b""),
    lib.WRITE_12: (rw12(lib.WRITE_12, 1, 1), bytes(512), 0, b""),
    cdb.WRITE_16: (rw16(cdb.WRITE_16, 1, 1), bytes(512), 0, b""),
    lib.SYNCHRONIZE_CACHE: (rw10(lib.SYNCHRONIZE_CACHE, 0, 0), b"", 0, b""),
    cdb.SYNCHRONIZE_CACHE_16: (rw16(cdb.SYNCHRONIZE_CACHE_16, 0, 0), b"", 0, b""),
    lib.WRITE_SAME: (rw10(lib.WRITE_SAME, 1, 8), bytes(512), 0, b""),
    cdb.WRITE_SAME_16: (rw16(cdb.WRITE_SAME_16, 1, 8, flags=sbc.WS_NDOB), b"", 0, b""),
    cdb.UNMAP: (struct.pack(">BBIBHB", cdb.UNMAP, 0, 0, 0, 24, 0),
                struct.pack(">HHI", 22, 16, 0) + struct.pack(">QII", 8, 8, 0), 0, b""),
}


def test_the_table_has_every_command(adapter):
    dev, _ = adapter
    assert set(TABLE) == set(dev.target.luns[0].commands) | set(dev.target.own)


@pytest.mark.parametrize("opcode", sorted(TABLE), ids=hex)
def test_every_command(adapter, opcode):
    if opcode == cdb.UNMAP and not adapter[0].target.luns[0].thin:
        pytest.skip("the file system here punches no holes")
    cdb_bytes, out, in_len, want = TABLE[opcode]
    r = ok(run(adapter, cdb_bytes, out=out, in_len=in_len))
    assert r.data.startswith(want) and r.resid == 0
    assert r.written == RESP_SIZE + in_len


# Any CDB at all, on any LUN, with any buffers: an answer, never an exception.
@settings(deadline=None, database=None, derandomize=True, max_examples=400,
          suppress_health_check=list(HealthCheck))
@given(opcode=st.sampled_from([*TABLE, 0x00, 0x5F, 0xA3, 0xFF]),
       rest=st.binary(min_size=31, max_size=31), lun=st.sampled_from([0, 1, 2, 300]),
       out=st.binary(max_size=1024), in_len=st.sampled_from([0, 1, 17, 512, 4096]))
def test_any_cdb_gets_an_answer(adapter, opcode, rest, lun, out, in_len):
    r = run(adapter, bytes((opcode,)) + rest, lun=lun, out=out, in_len=in_len)
    assert r.response in (lib.VIRTIO_SCSI_S_OK, lib.VIRTIO_SCSI_S_OVERRUN)
    assert r.status in (sense.GOOD, sense.CHECK_CONDITION)
    assert RESP_SIZE <= r.written <= RESP_SIZE + in_len
    assert (r.status == sense.CHECK_CONDITION) == bool(r.sense)
