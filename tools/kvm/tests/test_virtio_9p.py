"""virtio-9p through the mock driver: the mount tag in config space, and
9P messages split across descriptors as Linux sends them."""

import errno
import importlib
import os
import struct
import tracemalloc

import pytest

from include.uapi import lib
from kvm.errors import LkvmError
from tests.test_virtio_fuzz import fuzz_device
from virtio.mock import Driver, mock_memory
from virtio.p9.client import parse
from virtio.p9.wire import LAYOUTS, Msg, message, pack

P9 = importlib.import_module("virtio.9p").P9


def test_mount_tag_in_config(tmp_path):
    dev = P9(mock_memory(), str(tmp_path), "hostshare")
    assert dev.features >> lib.VIRTIO_9P_MOUNT_TAG & 1
    assert dev.read_config(0, 2) == len("hostshare")
    assert bytes(dev.config[2:]) == b"hostshare"
    dev.close()


def test_version_across_descriptors(tmp_path):
    (tmp_path / "hello").write_text("hi")
    dev = P9(mock_memory(), str(tmp_path))
    (q,) = Driver(dev).start()
    req = message(Msg.TVERSION, 0xFFFF, pack("ds", 8192, b"9P2000.L"))
    q.add([req[:3], req[3:9], req[9:]], [100, 8092])
    q.kick()
    ((_, written, data),) = q.collect()
    rtype, _, fields = parse(data[:written])
    assert rtype == Msg.TVERSION + 1 and fields == [8192, b"9P2000.L"]
    dev.close()


def test_hostile_messages_and_chains(request, tmp_path):
    fuzz_device(request, P9(mock_memory(), str(tmp_path)), "9p")
    assert os.listdir(tmp_path) == []


def test_bad_share_is_an_error(tmp_path):
    with pytest.raises(LkvmError, match="not a directory"):
        P9(mock_memory(), str(tmp_path / "missing"))
    with pytest.raises(LkvmError, match="1 to 32 bytes"):
        P9(mock_memory(), str(tmp_path), "x" * 33)


# Tread and Twrite as Linux's zero-copy path sends them: the message or
# the reply header in one buffer, the data in the user's pages after it.
DATA = bytes(range(251)) * 2100                 # > 512 KiB, no two pages alike
O_RDWR = 0o2


class Mounted:
    """A device with the share mounted and fid 1 open on `data`."""

    def __init__(self, tmp_path, msize: int = 128 * 1024) -> None:
        (tmp_path / "data").write_bytes(DATA)
        self.path = tmp_path / "data"
        self.dev = P9(mock_memory(), str(tmp_path))
        (self.q,) = Driver(self.dev).start()
        self.tag = 0
        assert self.call(Msg.TVERSION, msize, b"9P2000.L") == [msize, b"9P2000.L"]
        self.call(Msg.TATTACH, 0, 0xFFFFFFFF, b"", b"", 0)
        self.call(Msg.TWALK, 0, 1, [b"data"])
        self.call(Msg.TLOPEN, 1, O_RDWR)

    def request(self, out: list[bytes], in_lens: list[int]) -> tuple[int, bytes]:
        """Queue one chain; (bytes written, the writable buffers joined)."""
        self.q.add(out, in_lens, indirect=True)
        self.q.kick()
        ((_, written, data),) = self.q.collect()
        return written, data

    def message(self, mtype: int, *fields) -> bytes:
        self.tag += 1
        return message(mtype, self.tag, pack(LAYOUTS[mtype][0], *fields))

    def call(self, mtype: int, *fields) -> list:
        written, data = self.request([self.message(mtype, *fields)], [8192])
        rtype, tag, out = parse(data[:written])
        assert (rtype, tag) == (mtype + 1, self.tag), out
        return out

    def read(self, offset: int, count: int, in_lens: list[int]) -> tuple[int, int, bytes]:
        """(count in the reply, bytes written, the data after the header)."""
        written, data = self.request([self.message(Msg.TREAD, 1, offset, count)], in_lens)
        size, rtype, tag, n = struct.unpack_from("<IBHI", data)
        assert (size, rtype, tag) == (11 + n, Msg.TREAD + 1, self.tag)
        return n, written, data[11:]


@pytest.fixture
def mounted(tmp_path):
    m = Mounted(tmp_path)
    yield m
    m.dev.close()


def test_read_spans_descriptors(mounted):
    # The header in its own 11 bytes, the data over pages that start mid-page.
    pages = [100] + [4096] * 31 + [3972]
    n, written, data = mounted.read(5000, sum(pages), [11] + pages)
    assert n == sum(pages) == 128 * 1024 - 24 and written == 11 + n
    assert data == DATA[5000:5000 + n]


def test_read_header_split_across_descriptors(mounted):
    n, written, data = mounted.read(7, 20, [3, 5, 3, 6, 100])
    assert (n, written) == (20, 31)
    assert data[:20] == DATA[7:27]


def test_read_short_and_at_eof(mounted):
    n, written, data = mounted.read(len(DATA) - 10, 4096, [11, 4096])
    assert (n, written) == (10, 21) and data[:10] == DATA[-10:]
    n, written, _ = mounted.read(len(DATA), 4096, [11, 4096])
    assert (n, written) == (0, 11)
    n, written, _ = mounted.read(len(DATA) + 12345, 4096, [11, 4096])
    assert (n, written) == (0, 11)


def test_read_count_clamped_to_msize(mounted):
    msize = 128 * 1024
    n, written, data = mounted.read(0, 0xFFFFFFFF, [11] + [4096] * 40)
    assert (n, written) == (msize - 11, msize)
    assert data[:n] == DATA[:n]


def test_read_count_clamped_to_buffers(mounted):
    # Fewer writable bytes than the count: the reply says what it holds,
    # rather than a count the guest's buffers cut short.
    n, written, data = mounted.read(0, 8192, [11, 1000, 24])
    assert (n, written) == (1024, 11 + 1024) and data == DATA[:1024]


def test_write_spans_descriptors(mounted):
    payload = bytes(reversed(DATA[:10000]))
    msg = mounted.message(Msg.TWRITE, 1, 300, payload)
    # The fixed fields split across two buffers, the data over three.
    out = [msg[:9], msg[9:23], msg[23:100], msg[100:4196], msg[4196:]]
    written, data = mounted.request(out, [11])
    assert parse(data[:written])[2] == [len(payload)]
    assert mounted.path.read_bytes() == DATA[:300] + payload + DATA[10300:]


def test_write_of_exactly_msize(mounted):
    msize = 128 * 1024
    for extra, want in ((0, [msize - 23]), (1, [errno.EMSGSIZE])):
        msg = mounted.message(Msg.TWRITE, 1, 0, DATA[:msize - 23 + extra])
        written, data = mounted.request([msg[:23]] + [msg[i:i + 4096] for i in
                                                      range(23, len(msg), 4096)], [11])
        assert parse(data[:written])[2] == want
    assert mounted.path.read_bytes() == DATA


def test_write_count_must_match(mounted):
    msg = bytearray(mounted.message(Msg.TWRITE, 1, 0, b"x" * 100))
    msg[19:23] = (99).to_bytes(4, "little")
    written, data = mounted.request([bytes(msg[:23]), bytes(msg[23:])], [11])
    assert parse(data[:written])[2] == [errno.EPROTO]
    assert mounted.path.read_bytes() == DATA


def kick_peak(m: Mounted, out: list[bytes], in_lens: list[int]) -> tuple[int, bytes]:
    """Python's peak allocation while the device answers one chain, and
    the buffers it wrote."""
    m.q.add(out, in_lens, indirect=True)
    tracemalloc.start()
    try:
        m.q.kick()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ((_, written, data),) = m.q.collect()
    return peak, data[:written]


def test_data_is_not_copied_through_python(tmp_path):
    # A whole msize of data each way: what Python allocates is headers and
    # bookkeeping, not the data.
    m = Mounted(tmp_path, msize=512 * 1024)
    count = 512 * 1024 - 11
    read_peak, reply = kick_peak(m, [m.message(Msg.TREAD, 1, 0, count)], [11] + [8192] * 64)
    assert reply[11:] == DATA[:count]
    msg = m.message(Msg.TWRITE, 1, 1, DATA[:count - 12])
    write_peak, reply = kick_peak(m, [msg[:23], msg[23:]], [11])
    assert parse(reply)[2] == [count - 12]
    m.dev.close()
    assert m.path.read_bytes() == DATA[:1] + DATA[:count - 12] + DATA[count - 11:]
    assert read_peak < 64 << 10 and write_peak < 64 << 10, (read_peak, write_peak)
