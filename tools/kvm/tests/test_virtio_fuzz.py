"""Hostile drivers against every device, property-based (hypothesis).

Each case is a byte string decoded into what a broken or malicious guest
could do: queue sizes that are not powers of two, rings outside RAM or
misaligned, descriptors pointing into the hole or past RAM, lengths that
wrap, loops, indirect tables inside indirect tables, readable descriptors
where writable ones belong, available indexes running ahead, feature bits
never offered, blk headers with any type and sector, balloon page
numbers inside and outside RAM, with target changes and stats requests
in between, and virtio-net control commands of any class and command
with frames arriving between kicks.  The device must answer with an error status or mark itself
NEEDS_RESET; any other exception fails the test, and every access goes
through GuestMemory.view, which refuses anything outside RAM.  10,000
cases per device, 100,000 with --slow.
"""

import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disk.core import open_disk
from disk.raw import RawDisk
from include.uapi import lib
from ipc.protocol import BALLOON, STAT, U32, IpcError
from tests.helpers import record_fuzz_cases
from tests.test_net_ctrl import OffloadBackend
from tests.test_virtio_net import MAC
from virtio import balloon as balloon_mod
from virtio.balloon import PAGE_SHIFT, PFN, STATS, Balloon
from virtio.blk import OUTHDR, RANGE, Blk
from virtio.console import Console
from virtio.device import S_FEATURES_OK
from virtio.mock import F_INDIRECT, F_NEXT, F_WRITE, HIGH_RAM, HOLE, LOW_RAM, Driver, mock_memory
from virtio.net import Net
from virtio.queue import DESC, USED_ELEM, USED_IDX, USED_RING
from virtio.rng import Rng

CASES, SLOW_CASES = 10_000, 100_000
FUZZ = settings(deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))

RINGS = 0x100000                 # desc, avail, used: 64 KiB apart
BUFS = 0x200000                  # buffers the descriptors point at
INDIRECT = 0x300000              # indirect tables
SCRATCH = (RINGS, INDIRECT + 0x10000)
ADDRS = [BUFS, BUFS + 0x1000, BUFS + 7, INDIRECT, HOLE[0], HOLE[0] - 8, LOW_RAM - 1,
         HOLE[1] - 16, 2**64 - 8, 2**63, 0]
LENS = [0, 1, 8, 16, 17, 512, 4096, 0x10000, 0xFFFFFFFF, 0x80000000]
SIZES = [1, 2, 4, 8, 16, 3, 0, 12, 256, 32768, 65535]
BLK_TYPES = [lib.VIRTIO_BLK_T_IN, lib.VIRTIO_BLK_T_OUT, lib.VIRTIO_BLK_T_FLUSH,
             lib.VIRTIO_BLK_T_GET_ID, lib.VIRTIO_BLK_T_DISCARD, lib.VIRTIO_BLK_T_WRITE_ZEROES,
             lib.VIRTIO_BLK_T_SCSI_CMD, 0xFFFFFFFF]
SECTORS = [0, 1, 127, 128, 2**32, 2**63 - 1, 2**64 - 1]
# Balloon pages: buffers and the descriptor table being read, RAM's edges,
# the hole, past the end.  Never the used ring: the checks below read it.
PFNS = [BUFS >> PAGE_SHIFT, (BUFS >> PAGE_SHIFT) + 1, RINGS >> PAGE_SHIFT, 0,
        (LOW_RAM >> PAGE_SHIFT) - 1, HOLE[0] >> PAGE_SHIFT, HOLE[1] >> PAGE_SHIFT,
        (HOLE[1] + HIGH_RAM >> PAGE_SHIFT) - 1, HOLE[1] + HIGH_RAM >> PAGE_SHIFT, 0xFFFFFFFF]
NET_CLASSES = [lib.VIRTIO_NET_CTRL_RX, lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_VLAN,
               lib.VIRTIO_NET_CTRL_ANNOUNCE, lib.VIRTIO_NET_CTRL_MQ,
               lib.VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0xFF]


class Reader:
    """Draws from the case's bytes; zeros once they run out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little")

    def pick(self, options: list) -> object:
        return options[self.int(1) % len(options)]

    def value(self, options: list, width: int) -> int:
        """Mostly one of the interesting values, sometimes anything."""
        return self.int(width) if self.int(1) % 4 == 0 else self.pick(options)


def hostile_case(dev, data: bytes) -> None:
    r = Reader(data)
    d = Driver(dev)
    dev.mem.view(*SCRATCH[:1], SCRATCH[1] - SCRATCH[0])[:] = bytes(SCRATCH[1] - SCRATCH[0])
    offered = dev.offered()
    features = offered & r.int(8) if r.int(1) % 8 else r.int(8)
    ok = d.negotiate(features)
    assert ok == (features & ~offered == 0)
    if not ok:
        return
    q = dev.queues[r.int(1) % len(dev.queues)]
    index = dev.queues.index(q)
    size = r.value(SIZES[:5], 2)
    q.size = size
    q.desc_addr, q.avail_addr, q.used_addr = RINGS, RINGS + 0x10000, RINGS + 0x20000
    if r.int(1) % 8 == 0:
        setattr(q, r.pick(["desc_addr", "avail_addr", "used_addr"]), r.value(ADDRS, 8))
    if dev.mem.contains(q.used_addr, 4):
        dev.mem.write(q.used_addr, bytes(4))  # as a driver zeroes its rings
    dev.enable_queue(index)
    dev.set_status(dev.status | lib.VIRTIO_CONFIG_S_DRIVER_OK)
    if not q.enabled:
        assert dev.broken
        return
    table = max(size, 1)
    for _ in range(r.int(1) % 8):
        where = r.pick([RINGS, INDIRECT])
        i = r.int(1) % (table if where == RINGS else 16)
        flags = r.int(1) & (F_NEXT | F_WRITE | F_INDIRECT) if r.int(1) % 4 else r.int(2)
        DESC.pack_into(dev.mem.view(where, 16 * (i + 1)), 16 * i, r.value(ADDRS, 8),
                       r.value(LENS, 4), flags, r.int(1) % (table + 2))
    for addr in (BUFS, BUFS + 0x1000):
        if isinstance(dev, Balloon):
            dev.mem.write(addr, b"".join(PFN.pack(r.value(PFNS, 4)) for _ in range(4)))
        elif isinstance(dev, Net):     # a control command, or a header to transmit
            dev.mem.write(addr, bytes([r.pick(NET_CLASSES), r.int(1) % 8]) +
                          r.int(16).to_bytes(16, "little"))
        elif r.int(1) % 2:
            dev.mem.write(addr, OUTHDR.pack(r.pick(BLK_TYPES), 0, r.value(SECTORS, 8)))
        else:
            dev.mem.write(addr, RANGE.pack(r.value(SECTORS, 8), r.int(4), r.int(1) % 3))
    published = r.int(1) % 4
    avail = dev.mem.view(q.avail_addr, 4 + 2 * table + 2) if dev.mem.contains(
        q.avail_addr, 4 + 2 * table + 2) else None
    if avail is not None:
        for n in range(published):
            struct.pack_into("<H", avail, 4 + 2 * (n % table), r.int(1) % (table + 1))
        idx = published if r.int(1) % 8 else r.int(2)
        struct.pack_into("<H", avail, 2, idx)
    if isinstance(dev, Console) and r.int(1) % 2:
        dev.receive(b"keys")
    if isinstance(dev, Net) and r.int(1) % 2:
        pair = r.int(1) % 2
        dev.backends[pair].inbox.append(r.int(12).to_bytes(12, "little") * r.pick([1, 8, 4096]))
        dev.receive(pair)
    dev.notify(index)
    if isinstance(dev, Balloon):
        balloon_requests(dev, r)
    if dev.broken:
        return
    # Every chain taken was given back, but the stats buffer the balloon keeps.
    kept = int(isinstance(dev, Balloon) and index == STATS and dev.stats_head is not None)
    assert q.used_idx + kept == q.last_avail
    if q.used_addr != RINGS + 0x20000:
        return  # the case's own writes may have landed on a ring it moved
    used = dev.mem.view(q.used_addr, USED_RING + 8 * table + 2)
    done = struct.unpack_from("<H", used, USED_IDX)[0]
    assert done + kept == q.last_avail
    for n in range(min(done, table)):
        head, _ = USED_ELEM.unpack_from(used, USED_RING + 8 * n)
        assert head < table


def balloon_requests(dev: Balloon, r: Reader) -> None:
    """`lkvm balloon` and `lkvm stat` at any moment: the stats buffer goes
    back into whatever state the rings are in."""
    handlers = dev.ipc_handlers("fuzz")
    if r.int(1) % 2:
        # Any s32 MiB: the payload's bytes, as the client packs them.
        handlers[BALLOON][0](U32.pack(r.value([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000], 4)))
    if r.int(1) % 2:
        try:
            handlers[STAT][0](b"")
        except IpcError:
            pass  # nobody refilled it: STATS_TIMEOUT is 0 here


@pytest.fixture
def disk_path(tmp_path):
    path = tmp_path / "fuzz.img"
    path.write_bytes(os.urandom(64 << 10))
    return str(path)


def qcow2_beside(path: str) -> str:
    """An empty qcow2 image as large as the raw one, made by qemu-img."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img (Debian's qemu-utils) is not installed")
    image = path + ".qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
                    image, str(os.path.getsize(path))], check=True, timeout=60)
    return image


DEVICES = {
    "rng": lambda mem, path: Rng(mem),
    "console": lambda mem, path: Console(mem, lambda data: None),
    "blk": lambda mem, path: Blk(mem, RawDisk(path), "fuzz"),
    "blk-ro": lambda mem, path: Blk(mem, RawDisk(path, readonly=True), "fuzz"),
    "blk-snapshot": lambda mem, path: Blk(mem, open_disk(path, snapshot=True), "fuzz"),
    "blk-qcow2": lambda mem, path: Blk(mem, open_disk(qcow2_beside(path)), "fuzz"),
    "balloon": lambda mem, path: Balloon(mem),
    # Two queue pairs on a back end with offloads: every queue kind, and
    # the control queue where MQ puts it or not.
    "net": lambda mem, path: Net(mem, [OffloadBackend(), OffloadBackend()], MAC),
}


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_hostile_guests_never_crash_a_device(request, name, disk_path, monkeypatch):
    monkeypatch.setattr(balloon_mod, "STATS_TIMEOUT", 0)
    fuzz_device(request, DEVICES[name](mock_memory(), disk_path), name)


def fuzz_device(request, dev, target: str) -> None:
    """Feed `dev` CASES hostile guests (SLOW_CASES under --slow), then
    close it; every case must have run, and the count is reported."""
    cases = SLOW_CASES if request.config.getoption("--slow") else CASES
    ran = 0

    @settings(FUZZ, max_examples=cases)
    @given(st.binary(max_size=160))
    def case(data: bytes) -> None:
        nonlocal ran
        ran += 1
        hostile_case(dev, data)

    case()
    dev.close()
    assert ran >= cases
    record_fuzz_cases(request.config, f"virtio-{target} hostile guests", ran)


def test_feature_refusal_is_checked():
    dev = Rng(mock_memory())
    assert not Driver(dev).negotiate(1 << 63)
    assert not dev.status & S_FEATURES_OK
    dev.close()
