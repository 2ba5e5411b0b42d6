"""virtio-blk, -console and -rng driven through the mock driver as a
guest drives them."""

import fcntl
import os
import struct
import tempfile

import pytest

from disk.core import open_disk
from disk.raw import RawDisk
from include.uapi import lib
from kvm.errors import LkvmError
from virtio.blk import OUTHDR, RANGE, Blk
from virtio.console import RX, TX, Console
from virtio.mock import Driver, mock_memory

MIB = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (4 * MIB // 256))
    return path


def blk_for(path, **kw):
    dev = Blk(mock_memory(), RawDisk(str(path), **kw), "lkvm-test")
    (q,) = Driver(dev).start()
    return dev, q


def request(q, kind, sector=0, out=b"", in_len=0, indirect=False):
    q.add([OUTHDR.pack(kind, 0, sector), *([out] if out else [])], [in_len, 1] if in_len else [1],
          indirect=indirect)
    q.kick()
    ((_, written, data),) = q.collect()
    return data[-1], data[:-1], written


def test_blk_reads_writes_and_flushes(image):
    dev, q = blk_for(image)
    status, data, written = request(q, lib.VIRTIO_BLK_T_IN, 8, in_len=4096)
    assert status == lib.VIRTIO_BLK_S_OK and written == 4097
    assert data == image.read_bytes()[4096:8192]
    payload = os.urandom(8192)
    assert request(q, lib.VIRTIO_BLK_T_OUT, 1, out=payload, indirect=True)[0] == 0
    assert request(q, lib.VIRTIO_BLK_T_FLUSH)[0] == 0
    assert image.read_bytes()[512:512 + 8192] == payload
    dev.close()


def test_blk_config_and_id(image):
    dev, q = blk_for(image)
    assert dev.read_config(0, 8) == 4 * MIB // 512
    status, data, _ = request(q, lib.VIRTIO_BLK_T_GET_ID, in_len=lib.VIRTIO_BLK_ID_BYTES)
    assert status == 0 and data.rstrip(b"\0") == b"lkvm-test"
    dev.close()


@pytest.mark.parametrize("sector,length", [(4 * MIB // 512, 512), (4 * MIB // 512 - 1, 1024),
                                           (2**63, 512), (0, 100)])
def test_blk_requests_past_the_end_or_unaligned_get_ioerr(image, sector, length):
    dev, q = blk_for(image)
    assert request(q, lib.VIRTIO_BLK_T_IN, sector, in_len=length)[0] == lib.VIRTIO_BLK_S_IOERR
    assert request(q, lib.VIRTIO_BLK_T_OUT, sector, out=b"x" * length)[0] == \
        lib.VIRTIO_BLK_S_IOERR
    assert not dev.broken
    dev.close()


def test_blk_unknown_request_is_unsupported(image):
    dev, q = blk_for(image)
    assert request(q, 0x7777)[0] == lib.VIRTIO_BLK_S_UNSUPP
    dev.close()


def test_blk_discard_and_write_zeroes(image):
    dev, q = blk_for(image)
    if not dev.features >> lib.VIRTIO_BLK_F_DISCARD & 1:
        pytest.skip("the file system here cannot punch holes")
    assert request(q, lib.VIRTIO_BLK_T_DISCARD, out=RANGE.pack(8, 8, 0))[0] == 0
    assert request(q, lib.VIRTIO_BLK_T_WRITE_ZEROES, out=RANGE.pack(100, 1, 0))[0] == 0
    data = image.read_bytes()
    assert data[4096:8192] == bytes(4096) and data[51200:51712] == bytes(512)
    assert data[8192:8200] == bytes(range(8))
    assert request(q, lib.VIRTIO_BLK_T_DISCARD,
                   out=RANGE.pack(4 * MIB // 512, 1, 0))[0] == lib.VIRTIO_BLK_S_IOERR
    dev.close()


def test_blk_read_only_is_offered_and_refuses_writes(image):
    before = image.read_bytes()
    image.chmod(0o444)                  # O_RDONLY is all ,ro needs
    dev, q = blk_for(image, readonly=True)
    assert dev.features >> lib.VIRTIO_BLK_F_RO & 1
    assert fcntl.fcntl(dev.disk.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    assert not dev.features & (1 << lib.VIRTIO_BLK_F_DISCARD | 1 << lib.VIRTIO_BLK_F_WRITE_ZEROES)
    assert request(q, lib.VIRTIO_BLK_T_OUT, 0, out=b"\xaa" * 512)[0] == lib.VIRTIO_BLK_S_IOERR
    assert request(q, lib.VIRTIO_BLK_T_IN, 0, in_len=512)[1] == before[:512]
    assert request(q, lib.VIRTIO_BLK_T_FLUSH)[0] == lib.VIRTIO_BLK_S_OK
    assert image.read_bytes() == before and not dev.broken
    dev.close()


def test_blk_writable_disk_is_not_offered_read_only(image):
    dev, _ = blk_for(image)
    assert not dev.features >> lib.VIRTIO_BLK_F_RO & 1
    dev.close()


@pytest.mark.parametrize("length", [512, 4096, 70 << 10, 200 << 10])
@pytest.mark.parametrize("sector", [0, 1, 127, 8192 - 400])
def test_blk_snapshot_writes_go_to_an_overlay(image, sector, length):
    before = image.read_bytes()
    image.chmod(0o444)
    dev = Blk(mock_memory(), open_disk(str(image), snapshot=True), "lkvm-test")
    (q,) = Driver(dev).start()
    assert not dev.features >> lib.VIRTIO_BLK_F_RO & 1
    payload = os.urandom(length)
    assert request(q, lib.VIRTIO_BLK_T_OUT, sector, out=payload)[0] == 0
    want = bytearray(before)
    want[sector * 512:sector * 512 + length] = payload
    first = max(0, sector * 512 - (100 << 10))  # the grains around the write too
    n = min(400 << 10, len(before) - first)
    status, data, _ = request(q, lib.VIRTIO_BLK_T_IN, first // 512, in_len=n)
    assert status == 0 and data == want[first:first + n]
    assert request(q, lib.VIRTIO_BLK_T_FLUSH)[0] == 0
    assert image.read_bytes() == before
    dev.close()


def test_blk_snapshot_without_a_temporary_dir_is_one_line(image, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    with pytest.raises(LkvmError, match=r"^disk image .*: no room for its snapshot in .*gone: "):
        open_disk(str(image), snapshot=True)
    open_disk(str(image)).close()       # and the image was closed, its lock with it


def test_blk_snapshot_keeps_no_copy_in_memory(image, tmp_path):
    """The overlay is an unlinked file on disk, sparse: what the guest
    writes costs neither lkvm's memory nor a name in the file system."""
    disk = open_disk(str(image), snapshot=True)
    fd = disk.overlay.fileno()
    assert os.fstat(fd).st_nlink == 0
    disk.writev([memoryview(b"\x55" * (1 << 20))], 2 * MIB)
    assert os.pread(fd, 16, 2 * MIB) == b"\x55" * 16
    assert os.fstat(fd).st_blocks * 512 < 2 * MIB
    assert len(disk.held) <= 4 * MIB // (64 << 10) // 8 + 1
    disk.close()


def test_blk_direct_io_with_unaligned_buffers(image):
    dev, q = blk_for(image, direct=True)
    q.driver.alloc(3)  # knock the next buffer off alignment
    status, data, _ = request(q, lib.VIRTIO_BLK_T_IN, 1, in_len=1024)
    assert status == 0 and data == image.read_bytes()[512:1536]
    assert request(q, lib.VIRTIO_BLK_T_OUT, 2, out=b"z" * 512)[0] == 0
    assert image.read_bytes()[1024:1536] == b"z" * 512
    dev.close()


def test_blk_malformed_requests_get_no_crash(image):
    dev, q = blk_for(image)
    q.add([b"short"], [1])  # header cut short
    q.add([OUTHDR.pack(lib.VIRTIO_BLK_T_IN, 0, 0)], [])  # no status byte
    q.kick()
    done = q.collect()
    assert done[0][1:] == (1, bytes([lib.VIRTIO_BLK_S_IOERR])) and done[1][1] == 0
    dev.close()


def test_blk_requests_with_more_iovecs_than_iov_max(image):
    class BigBlk(Blk):
        queue_size = 4096

    dev = BigBlk(mock_memory(), RawDisk(str(image)), "x")
    d = Driver(dev)
    (q,) = d.start()
    n = 2000
    q.add([OUTHDR.pack(lib.VIRTIO_BLK_T_IN, 0, 0)], [512] * n + [1], indirect=True)
    q.kick()
    ((_, written, data),) = q.collect()
    assert written == 512 * n + 1 and data[:-1] == image.read_bytes()[:512 * n]
    dev.close()


def test_console_output_and_input():
    out = []
    dev = Console(mock_memory(), out.append)
    rx, tx = Driver(dev).start()
    tx.add([b"hello ", b"hvc0\n"], [])
    tx.kick()
    assert out == [b"hello hvc0\n"] and tx.collect()[0][1] == 0
    dev.receive(b"typed before buffers")
    rx.add([], [8])
    rx.kick()
    rx.add([], [64])
    rx.kick()
    assert [data[:n] for _, n, data in rx.collect()] == [b"typed be", b"fore buffers"]
    assert struct.unpack_from("<HHI", dev.config) == (80, 25, 1)
    assert (RX, TX) == (0, 1)
