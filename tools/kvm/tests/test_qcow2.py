"""qcow2 against Debian's qemu-img: images it made, read and written by
lkvm, must compare equal to a raw image given the same writes and pass
`qemu-img check`; hostile metadata must give one line or an I/O error."""

import os
import random
import shutil
import struct
import subprocess
import sys

import pytest

from disk.core import open_disk
from disk.qcow2 import Qcow2
from include.uapi import lib
from kvm.errors import LkvmError
from tests.helpers import KVMDIR, guest, run_lkvm
from virtio.blk import OUTHDR, Blk
from virtio.mock import Driver, mock_memory

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img (Debian's qemu-utils) is not installed")
MIB = 1 << 20
QEMU_TIMEOUT = 60


def qemu_img(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                       timeout=QEMU_TIMEOUT)
    assert r.returncode in ok, (args, r.stdout, r.stderr)
    return r


def create(path, size=4 * MIB, compat="1.1", cluster=65536, backing=None, fmt=None,
           unsafe=False):
    opts = f"compat={compat},cluster_size={cluster}"
    extra = (["-b", backing, "-F", fmt] if backing else []) + (["-u"] if unsafe else [])
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, *extra, str(path), str(size))


def check(path) -> subprocess.CompletedProcess:
    """qemu-img check: clean, nothing else (no leaks either)."""
    return qemu_img("check", str(path))


def same(qcow2, raw) -> None:
    qemu_img("compare", "-q", "-f", "qcow2", "-F", "raw", str(qcow2), str(raw))


def random_writes(disk, raw_path, seed: int, count: int, size: int) -> None:
    """The same random writes, 512-byte aligned, of 512 B to 300 KiB (so
    within one cluster and across many), to the qcow2 disk and a raw file."""
    rnd = random.Random(seed)
    fd = os.open(raw_path, os.O_RDWR)
    try:
        for _ in range(count):
            off = rnd.randrange(size // 512) * 512
            n = min(rnd.randrange(1, 600) * 512, size - off)
            data = rnd.randbytes(n)
            disk.writev([memoryview(data)], off)
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def read_all(disk) -> bytes:
    buf = bytearray(disk.size)
    disk.readv([memoryview(buf)], 0)
    return bytes(buf)


def raw_of(tmp_path, qcow2) -> bytes:
    out = tmp_path / "converted.raw"
    qemu_img("convert", "-O", "raw", str(qcow2), str(out))
    return out.read_bytes()


@pytest.mark.parametrize("compat,cluster", [("0.10", 65536), ("1.1", 65536), ("1.1", 512),
                                            ("0.10", 4096), ("1.1", 2 * MIB)])
def test_random_writes_compare_and_check_clean(tmp_path, compat, cluster):
    img, raw = tmp_path / "disk.qcow2", tmp_path / "disk.raw"
    size = 6 * MIB
    create(img, size, compat, cluster)
    raw.write_bytes(bytes(size))
    disk = open_disk(str(img))
    assert isinstance(disk, Qcow2) and disk.size == size
    assert disk.version == (2 if compat == "0.10" else 3)
    random_writes(disk, raw, seed=cluster, count=120, size=size)
    assert read_all(disk) == raw.read_bytes()
    disk.close()
    same(img, raw)
    check(img)
    # And again on the image as we left it: rewrites in place.
    disk = open_disk(str(img))
    random_writes(disk, raw, seed=cluster + 1, count=60, size=size)
    disk.close()
    same(img, raw)
    check(img)


def test_reads_what_qemu_wrote(tmp_path):
    img = tmp_path / "disk.qcow2"
    create(img, 4 * MIB, cluster=4096)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4096 100k",
                    "-c", "write -P 0x11 3M 512", str(img)], check=True,
                   capture_output=True, timeout=QEMU_TIMEOUT)
    expect = raw_of(tmp_path, img)     # first: lkvm's lock keeps qemu-img out
    disk = open_disk(str(img), readonly=True)
    assert read_all(disk) == expect
    disk.close()


def test_compressed_clusters_read_and_rewritten(tmp_path):
    raw, img = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    rnd = random.Random(7)
    text = b"".join(rnd.choice([b"lkvm ", b"qcow2 ", b"\0" * 9, b"kvm "]) for _ in range(500000))
    raw.write_bytes(text[:3 * MIB].ljust(3 * MIB, b"\0"))
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096",
             str(raw), str(img))
    assert "compressed" in qemu_img("check", str(img)).stdout
    disk = open_disk(str(img))
    assert read_all(disk) == raw.read_bytes()
    random_writes(disk, raw, seed=3, count=40, size=3 * MIB)  # partial: COW from inflated data
    disk.close()
    same(img, raw)
    check(img)


def test_zero_clusters(tmp_path):
    if shutil.which("qemu-io") is None:
        pytest.skip("no qemu-io")
    img, raw = tmp_path / "disk.qcow2", tmp_path / "disk.raw"
    create(img, 2 * MIB, cluster=4096)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M",
                    "-c", "write -z 64k 128k", "-c", "write -z -u 512k 64k", str(img)],
                   check=True, capture_output=True, timeout=QEMU_TIMEOUT)
    map_ = qemu_img("map", "--output=json", str(img)).stdout
    assert '"zero": true' in map_
    expect = bytearray(b"\x5a" * MIB + bytes(MIB))
    expect[64 << 10:192 << 10] = bytes(128 << 10)
    expect[512 << 10:576 << 10] = bytes(64 << 10)
    raw.write_bytes(expect)
    disk = open_disk(str(img))
    assert read_all(disk) == expect
    random_writes(disk, raw, seed=5, count=30, size=2 * MIB)
    disk.close()
    same(img, raw)
    check(img)


def test_backing_chain(tmp_path, monkeypatch):
    """raw <- qcow2 v2 (named relative to its image) <- qcow2 v3 (probed
    format), the base smaller than the disk; writes go to the top only."""
    sub = tmp_path / "images"
    sub.mkdir()
    base = sub / "base.raw"
    base.write_bytes(random.Random(1).randbytes(3 * MIB + 512))
    mid, top = sub / "mid.qcow2", sub / "top.qcow2"
    monkeypatch.chdir(sub)                  # so both names are stored relative
    create("mid.qcow2", 4 * MIB, "0.10", 4096, backing="base.raw", fmt="raw")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 8k", "mid.qcow2"],
                   check=True, capture_output=True, timeout=QEMU_TIMEOUT)
    create("top.qcow2", 4 * MIB, "1.1", 65536, backing="mid.qcow2", fmt="qcow2")
    monkeypatch.chdir(tmp_path)             # the names resolve against the image, not us
    before_mid = mid.read_bytes()
    expect = tmp_path / "expect.raw"
    expect.write_bytes(raw_of(tmp_path, top))
    disk = open_disk(str(top))
    assert read_all(disk) == expect.read_bytes()
    random_writes(disk, expect, seed=9, count=40, size=4 * MIB)
    disk.close()
    same(top, expect)
    check(top)
    assert mid.read_bytes() == before_mid


def test_l2_cache_is_bounded(tmp_path):
    """64 KiB clusters: an L2 table maps 512 MiB, the cache holds 16 of
    them; writes in 40 tables must evict and read back through it."""
    img = tmp_path / "disk.qcow2"
    size = 20 << 30
    create(img, size)
    disk = open_disk(str(img))
    assert disk.l2_cache_tables == 16
    spots = [(i * (512 * MIB) + i * 4096, bytes([i + 1]) * 4096) for i in range(40)]
    for off, data in spots:
        disk.writev([memoryview(data)], off)
        assert len(disk.l2_cache) <= 16
    for off, data in reversed(spots):
        buf = bytearray(4096)
        disk.readv([memoryview(buf)], off)
        assert buf == data
    disk.close()
    check(img)


def blk_request(q, kind, sector=0, out=b"", in_len=0):
    q.add([OUTHDR.pack(kind, 0, sector), *([out] if out else [])],
          [in_len, 1] if in_len else [1])
    q.kick()
    ((_, _, data),) = q.collect()
    return data[-1], data[:-1]


def test_virtio_blk_on_qcow2(tmp_path):
    img = tmp_path / "disk.qcow2"
    create(img, 3 * MIB + 4096, cluster=4096)
    dev = Blk(mock_memory(), open_disk(str(img)), "q")
    (q,) = Driver(dev).start()
    assert dev.read_config(0, 8) == (3 * MIB + 4096) // 512
    payload = os.urandom(12288)
    assert blk_request(q, lib.VIRTIO_BLK_T_OUT, 7, out=payload)[0] == lib.VIRTIO_BLK_S_OK
    assert blk_request(q, lib.VIRTIO_BLK_T_FLUSH)[0] == lib.VIRTIO_BLK_S_OK
    assert blk_request(q, lib.VIRTIO_BLK_T_IN, 7, in_len=12288) == (0, payload)
    assert blk_request(q, lib.VIRTIO_BLK_T_IN, (3 * MIB + 4096) // 512, in_len=512)[0] == \
        lib.VIRTIO_BLK_S_IOERR
    dev.close()
    check(img)


def test_snapshot_of_a_qcow2_leaves_it_alone(tmp_path):
    img = tmp_path / "disk.qcow2"
    create(img, MIB, cluster=4096)
    before = img.read_bytes()
    disk = open_disk(str(img), snapshot=True)
    disk.writev([memoryview(b"\x77" * 4096)], 8192)
    assert read_all(disk)[8192:12288] == b"\x77" * 4096
    disk.close()
    assert img.read_bytes() == before


def test_lkvm_run_with_a_qcow2_disk(tmp_path, kvm_available):
    img = tmp_path / "disk.qcow2"
    create(img, MIB, cluster=4096)
    r = run_lkvm("run", "-c", "1", "-m", "16", "-d", str(img), guest("hello"))
    assert r.returncode == 0 and r.stdout == b"Hello, lkvm!\n", r.stderr
    check(img)
    patch(img, 72, ">Q", 1 << 40)
    for spec in (str(img), f"{img},direct"):
        r = run_lkvm("run", "-c", "1", "-m", "16", "-d", spec, guest("hello"))
        assert r.returncode != 0 and b"Traceback" not in r.stderr
        assert r.stderr.count(b"\n") == 1 and str(img).encode() in r.stderr


# -- hostile metadata ---------------------------------------------------------

def patch(path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


# Header fields [(offset, format, value)], what lkvm says, and whether it
# still opens read-only.
HOSTILE_HEADERS = [
    ([(4, ">I", 4)], "qcow2 version 4 is not supported", False),
    ([(20, ">I", 30)], "cluster_bits 30 is out of range", False),
    ([(20, ">I", 8)], "cluster_bits 8 is out of range", False),
    ([(32, ">I", 1)], "encrypted qcow2 images are not supported", False),
    ([(72, ">Q", 1 << 40)], "unknown incompatible qcow2 feature bits 0x10000000000", False),
    ([(72, ">Q", 4)], "external data files are not supported", False),
    ([(72, ">Q", 16)], "extended L2 entries", False),
    ([(72, ">Q", 1)], "the dirty bit", True),
    ([(72, ">Q", 2)], "is marked corrupt", True),
    ([(96, ">I", 7)], "refcount order 7 is not supported", True),
    ([(96, ">I", 0)], "refcount order 0 is not supported", True),
    ([(36, ">I", 0)], "its L1 table is too small", False),
    ([(36, ">I", 1 << 30)], "its L1 table (1073741824 entries) is larger", False),
    ([(40, ">Q", 1 << 40)], "its L1 table (at 0x10000000000) is misaligned or past the end", False),
    ([(40, ">Q", 4096 + 8)], "is misaligned", False),
    ([(48, ">Q", 1 << 40)], "its refcount table (at 0x10000000000)", True),
    ([(56, ">I", 1 << 20)], "its refcount table is larger", True),
    ([(60, ">I", 1)], "has internal snapshots", True),
    ([(100, ">I", 8)], "its header length 8 is out of range", False),
    ([(100, ">I", 8192)], "its header is larger than a cluster", False),
    ([(8, ">Q", 4000), (16, ">I", 200)], "its backing file name is out of range", False),
    ([(8, ">Q", 8), (16, ">I", 8)], "its backing file name is empty or holds a NUL", False),
]


@pytest.mark.parametrize("fields,message,readable", HOSTILE_HEADERS,
                         ids=[m for _, m, _ in HOSTILE_HEADERS])
def test_hostile_headers_are_one_line(tmp_path, fields, message, readable):
    img = tmp_path / "disk.qcow2"
    create(img, MIB, cluster=4096)
    for field in fields:
        patch(img, *field)
    with pytest.raises(LkvmError, match="^disk image .*: ") as e:
        open_disk(str(img))
    assert message in str(e.value) and "\n" not in str(e.value)
    if readable:
        open_disk(str(img), readonly=True).close()


def test_backing_loops_and_missing_backing_files(tmp_path):
    img = tmp_path / "disk.qcow2"
    create(img, MIB, cluster=4096, backing=str(tmp_path / "nothere.raw"), fmt="raw",
           unsafe=True)
    with pytest.raises(LkvmError, match="nothere.raw"):
        open_disk(str(img))
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create(a, MIB, cluster=4096)
    create(b, MIB, cluster=4096, backing="a.qcow2", fmt="qcow2")
    # Make a's backing file b: a loop qemu-img would not let us make.
    qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", str(a))
    with pytest.raises(LkvmError, match="already in its backing chain"):
        open_disk(str(a), readonly=True)


def test_mangled_images_never_raise_anything_else(tmp_path):
    """Random bytes over a qcow2 image's header, L1 and L2 tables and
    refcounts (a fixed seed, so the same cases every run): opening says
    one line (LkvmError) or works, and then reads and writes work or are
    I/O errors, never another exception."""
    base = tmp_path / "base.qcow2"
    create(base, MIB, cluster=4096)
    disk = open_disk(str(base))
    for off in range(0, MIB, 64 << 10):
        disk.writev([memoryview(b"\x42" * 4096)], off)
    disk.close()
    pristine = base.read_bytes()
    rnd = random.Random(14)
    img = tmp_path / "mangled.qcow2"
    outcomes = set()
    for _ in range(300):
        data = bytearray(pristine)
        for _ in range(rnd.randrange(1, 8)):
            at = rnd.choice([rnd.randrange(0, 112), rnd.randrange(0, 5 * 4096)])
            data[at] = rnd.randrange(256)
        img.write_bytes(data)
        try:
            disk = open_disk(str(img))
        except LkvmError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
            continue
        try:
            for off in (0, 64 << 10, MIB - 4096):
                for op in (disk.readv, disk.writev):
                    try:
                        op([memoryview(bytearray(4096))], off)
                        outcomes.add("worked")
                    except OSError:
                        outcomes.add("I/O error")
        finally:
            disk.close()
    assert outcomes == {"refused", "worked", "I/O error"}


def l1_entry_offset(img) -> int:
    with open(img, "rb") as f:
        f.seek(40)
        return struct.unpack(">Q", f.read(8))[0]


def l2_table_of(img) -> int:
    with open(img, "rb") as f:
        f.seek(l1_entry_offset(img))
        return struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00


# Where to write what, and whether reading cluster 0 fails too (an entry
# of offset 0 is unallocated to a reader; only writing there would harm).
HOSTILE_ENTRIES = {
    "L1 entry past EOF": (lambda img: (l1_entry_offset(img), (1 << 40) | 1 << 63), True),
    "L1 entry misaligned": (lambda img: (l1_entry_offset(img), l2_table_of(img) + 512), True),
    "L2 entry past EOF": (lambda img: (l2_table_of(img), (1 << 40) | 1 << 63), True),
    "L2 entry misaligned": (lambda img: (l2_table_of(img), 4096 * 3 + 512 | 1 << 63), True),
    "L2 entry at the header": (lambda img: (l2_table_of(img), 1 << 63), False),
    "L2 entry on the L1 table": (lambda img: (l2_table_of(img), l1_entry_offset(img) | 1 << 63),
                                 False),
    "compressed garbage": (lambda img: (l2_table_of(img), 1 << 62 | 0x1234), True),
    "compressed past EOF": (lambda img: (l2_table_of(img), 1 << 62 | 1 << 40), True),
}


@pytest.mark.parametrize("name", HOSTILE_ENTRIES)
def test_hostile_tables_fail_the_request_not_lkvm(tmp_path, name):
    img = tmp_path / "disk.qcow2"
    create(img, 4 * MIB, cluster=4096)
    disk = open_disk(str(img))
    disk.writev([memoryview(b"\1" * 4096)], 0)     # an L1 entry and an L2 table
    disk.close()
    where, read_fails = HOSTILE_ENTRIES[name]
    offset, value = where(img)
    patch(img, offset, ">Q", value)
    dev = Blk(mock_memory(), open_disk(str(img)), "q")
    (q,) = Driver(dev).start()
    status = lib.VIRTIO_BLK_S_IOERR if read_fails else lib.VIRTIO_BLK_S_OK
    assert blk_request(q, lib.VIRTIO_BLK_T_IN, 0, in_len=4096)[0] == status
    assert blk_request(q, lib.VIRTIO_BLK_T_OUT, 0, out=b"\2" * 512)[0] == \
        lib.VIRTIO_BLK_S_IOERR
    # The rest of the disk (under another L1 entry) still works.
    assert blk_request(q, lib.VIRTIO_BLK_T_OUT, 3 * MIB // 512, out=b"\3" * 512)[0] == \
        lib.VIRTIO_BLK_S_OK
    assert blk_request(q, lib.VIRTIO_BLK_T_IN, 3 * MIB // 512, in_len=512) == (0, b"\3" * 512)
    assert not dev.broken
    dev.close()


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_refcount_table_grows(tmp_path, compat):
    """512-byte clusters: one refcount table cluster covers 8 MiB of
    file, so writing 20 MiB must move the table, twice."""
    img, raw = tmp_path / "disk.qcow2", tmp_path / "disk.raw"
    size = 20 * MIB
    create(img, size, compat, cluster=512)
    with open(img, "rb") as f:
        f.seek(48)
        before = struct.unpack(">QI", f.read(12))
    disk = open_disk(str(img))
    data = random.Random(2).randbytes(size)
    for off in range(0, size, 256 << 10):
        disk.writev([memoryview(data[off:off + (256 << 10)])], off)
    disk.close()
    raw.write_bytes(data)
    with open(img, "rb") as f:
        f.seek(48)
        offset, clusters = struct.unpack(">QI", f.read(12))
    assert offset != before[0] and clusters >= 4 * before[1]
    same(img, raw)
    check(img)


# -- kill -9 --------------------------------------------------------------------

WRITER = """
import os, random, sys
sys.path.insert(0, {kvmdir!r})
from disk.core import open_disk
disk = open_disk({img!r})
rnd = random.Random({seed})
slots = list(range({size} // {slot}))
rnd.shuffle(slots)
for slot in slots:
    n = rnd.randrange(1, {slot} // 512 + 1) * 512
    disk.writev([memoryview(bytes([slot % 251 + 1]) * n)], slot * {slot})
    print(slot, n, flush=True)
"""
SLOT = 16 << 10


@pytest.mark.parametrize("cluster,writes,size,slot", [
    (512, 5, 4 * MIB, SLOT), (512, 60, 4 * MIB, SLOT), (4096, 1, 4 * MIB, SLOT),
    (4096, 40, 4 * MIB, SLOT), (65536, 25, 4 * MIB, SLOT),
    (512, 300, 32 * MIB, 64 << 10),     # past 8 MiB of file: the refcount table has moved
])
def test_kill_9_mid_workload_leaves_no_corruption(tmp_path, cluster, writes, size, slot):
    """A child writes a slot of the disk at a time, saying so after each,
    and is killed with SIGKILL after `writes` of them, wherever it is
    then.  Leaked clusters are allowed (documented in disk/qcow2.py),
    errors are not, and every write it finished reads back."""
    img = tmp_path / "disk.qcow2"
    create(img, size, cluster=cluster)
    code = WRITER.format(kvmdir=KVMDIR, img=str(img), seed=writes, size=size, slot=slot)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        done = [child.stdout.readline() for _ in range(writes)]
    finally:
        child.kill()
        child.wait(timeout=QEMU_TIMEOUT)
    done += child.stdout.read().splitlines()     # those it finished before the kill
    child.stdout.close()
    r = qemu_img("check", str(img), ok=(0, 3))
    assert "ERROR" not in r.stdout + r.stderr and "corrupt" not in r.stdout + r.stderr
    qemu_img("check", "-r", "leaks", str(img))
    check(img)
    data = raw_of(tmp_path, img)
    assert len(done) >= writes
    for index, n in (map(int, line.split()) for line in done):
        assert data[index * slot:index * slot + n] == bytes([index % 251 + 1]) * n
