"""qcow2 images, versions 2 and 3, read and written.

The guest's disk is cut into clusters; a two-level table (L1 in memory,
L2 tables read through a small cache) maps each to a host cluster, to
nothing (read from the backing file, or zeros), to a zero cluster (v3)
or to zlib-compressed data.  Reference counts say which host clusters
are in use; `qemu-img check` compares them with the tables.

Crash safety is by ordered updates, as the format allows without lazy
refcounts: a new cluster's refcount and its data (copy-on-write filled)
are written first, then the table entry that points to it, with an
fdatasync before the entry (one per request that allocates) so that no
reordering by the host's page cache or disk can leave a table entry
pointing at a cluster whose refcount or contents are not there yet.  A
crash between the steps (kill -9, power loss) can leave a cluster
counted but unreferenced: qemu-img check reports that as a leaked
cluster (exit status 3), which `qemu-img check -r leaks` reclaims; it
never leaves a referenced cluster uncounted.  Counts of clusters a
rewrite replaces are dropped only after the new entry is in place, for
the same reason.

New clusters always come from the end of the file; freed ones are not
reused.  A full refcount table is replaced by a larger one at the end
of the file, which the header then points to.  What is not done:
discard, internal snapshots (an image with them opens read-only only),
external data files, extended L2 entries, encryption, compression types
other than zlib.  The image
is metadata we did not write: every offset in it is checked before use,
and a bad one fails that request with an I/O error, or the open with
one line.
"""

import errno
import os
import struct
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from disk import core
from disk.raw import IOV_MAX, RawDisk, lock, open_image
from kvm import msg
from kvm.errors import LkvmError
from virtio.iov import advance, split, total

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQ")      # the 72 bytes of version 2
HEADER_V3 = struct.Struct(">QQQII")             # what version 3 adds
V3_LENGTH = HEADER.size + HEADER_V3.size
EXTENSION = struct.Struct(">II")
U64 = struct.Struct(">Q")
REFTABLE_FIELDS = struct.Struct(">QI")          # refcount_table_offset, _clusters
REFTABLE_FIELDS_AT = 48

CLUSTER_BITS = range(9, 22)                     # as QEMU: 512 B to 2 MiB
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_COMPRESSED_EXTRA = 512                      # a compressed cluster may take more room
L2_CACHE_BYTES = 1 << 20
MAX_BACKING_NAME = 1023
MAX_CHAIN = 16

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63                # refcount is exactly one: writable in place
COMPRESSED = 1 << 62
ZERO = 1                        # v3: the cluster reads as zeros

EXT_END, EXT_BACKING_FORMAT = 0, 0xE2792ACA

DIRTY, CORRUPT, DATA_FILE, COMPRESSION_TYPE, EXTENDED_L2 = (1 << i for i in range(5))
# Incompatible features: those that forbid any use, and those that only
# forbid writing (our refcounts would be built on ones known to be wrong).
REFUSED = {
    DATA_FILE: "external data files are not supported",
    EXTENDED_L2: "extended L2 entries (subclusters) are not supported",
}
REFUSED_WRITABLE = {
    DIRTY: "has lazy refcounts pending (the dirty bit); repair it with "
           "`qemu-img check -r all` or open it with ,ro or ,snapshot",
    CORRUPT: "is marked corrupt; repair it with `qemu-img check -r all` "
             "or open it with ,ro or ,snapshot",
}
KNOWN = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2
REFCOUNT_FORMATS = {3: "B", 4: "H", 5: "I", 6: "Q"}   # refcount_order: whole bytes only


@dataclass
class Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    reftable_offset: int
    reftable_clusters: int
    nb_snapshots: int
    incompatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = HEADER.size
    compression_type: int = 0


def parse_header(raw: bytes, fail: Callable[[str], NoReturn]) -> Header:
    if len(raw) < HEADER.size:
        fail("its header is cut short")
    magic, version, *fields = HEADER.unpack_from(raw)
    if magic != MAGIC:
        fail("it is not a qcow2 image")
    if version not in (2, 3):
        fail(f"qcow2 version {version} is not supported (2 and 3 are)")
    h = Header(version, *fields[:-1])     # snapshots_offset: we never read snapshots
    if version == 3:
        if len(raw) <= V3_LENGTH:
            fail("its header is cut short")
        h.incompatible, _, h.autoclear, h.refcount_order, h.header_length = \
            HEADER_V3.unpack_from(raw, HEADER.size)
        if h.header_length < V3_LENGTH:
            fail(f"its header length {h.header_length} is out of range")
        if h.header_length > V3_LENGTH:
            h.compression_type = raw[V3_LENGTH]
    return h


class Qcow2:
    can_discard = can_zero = False

    def __init__(self, path: str, readonly: bool = False, chain: tuple[str, ...] = ()) -> None:
        self.path = path
        self.readonly = readonly
        self.backing: core.Disk | None = None
        self.warned = False
        self.fd = open_image(path, readonly, False)
        try:
            lock(self.fd, path, readonly)
            self._open((*chain, os.path.realpath(path)))
        except BaseException:
            self.close()
            raise

    def _fail(self, why: str) -> NoReturn:
        raise LkvmError(f"disk image {self.path}: {why}")

    # -- opening: every field checked before anything trusts it ------------

    def _open(self, chain: tuple[str, ...]) -> None:
        self.file_size = os.fstat(self.fd).st_size
        h = parse_header(os.pread(self.fd, 1 << CLUSTER_BITS.start, 0), self._fail)
        if h.cluster_bits not in CLUSTER_BITS:
            self._fail(f"cluster_bits {h.cluster_bits} is out of range "
                       f"({CLUSTER_BITS.start}-{CLUSTER_BITS.stop - 1})")
        self.version = h.version
        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs = 1 << h.cluster_bits
        self.l2_bits = h.cluster_bits - 3
        self.size = h.size
        if h.crypt_method:
            self._fail("encrypted qcow2 images are not supported")
        self._check_features(h)
        if h.header_length > cs:
            self._fail("its header is larger than a cluster")
        raw = os.pread(self.fd, cs, 0)
        backing_format = self._extensions(raw, h)
        if self.size >= 1 << 62:
            self._fail(f"virtual size {self.size} is out of range")
        per_l1 = cs << self.l2_bits
        if h.l1_size < -(-self.size // per_l1):
            self._fail("its L1 table is too small for its virtual size")
        if h.l1_size * 8 > MAX_L1_BYTES:
            self._fail(f"its L1 table ({h.l1_size} entries) is larger than we accept")
        self.l1_offset = h.l1_offset
        self.l1 = self._table(h.l1_offset, h.l1_size, "L1 table")
        self.l2_cache: OrderedDict[int, array] = OrderedDict()
        self.l2_cache_tables = max(1, L2_CACHE_BYTES // cs)
        self.zero_flag = ZERO if h.version == 3 else 0
        self.compressed_cache: tuple[int, bytes] = (-1, b"")
        self.zeros = bytes(cs)
        if not self.readonly:
            self._open_refcounts(h)
        if h.backing_offset:
            self.backing = self._open_backing(raw, h, backing_format, chain)

    def _check_features(self, h: Header) -> None:
        unknown = h.incompatible & ~KNOWN
        if unknown:
            self._fail(f"unknown incompatible qcow2 feature bits {unknown:#x}")
        for bit, why in REFUSED.items():
            if h.incompatible & bit:
                self._fail(why)
        if h.incompatible & COMPRESSION_TYPE and h.compression_type != 0:
            self._fail(f"compression type {h.compression_type} is not supported (zlib is)")
        for bit, why in REFUSED_WRITABLE.items():
            if h.incompatible & bit and not self.readonly:
                self._fail(why)
        if h.nb_snapshots and not self.readonly:
            self._fail("has internal snapshots, which lkvm does not write; "
                       "open it with ,ro or ,snapshot")

    def _extensions(self, raw: bytes, h: Header) -> str | None:
        """The header extensions; only the backing file's format matters."""
        pos, backing_format = h.header_length, None
        while True:
            if pos + EXTENSION.size > len(raw):
                self._fail("its header extensions run past the first cluster")
            kind, length = EXTENSION.unpack_from(raw, pos)
            pos += EXTENSION.size
            if kind == EXT_END:
                return backing_format
            if pos + length > len(raw):
                self._fail("its header extensions run past the first cluster")
            if kind == EXT_BACKING_FORMAT:
                backing_format = raw[pos:pos + length].decode("ascii", "replace")
            pos += -(-length // 8) * 8

    def _table(self, offset: int, entries: int, what: str) -> array:
        if offset % self.cluster_size or offset + entries * 8 > self.file_size:
            self._fail(f"its {what} (at {offset:#x}) is misaligned or past the end of the file")
        table = array("Q", os.pread(self.fd, entries * 8, offset))
        table.byteswap()
        return table

    def _open_refcounts(self, h: Header) -> None:
        if h.version == 3 and h.refcount_order not in REFCOUNT_FORMATS:
            self._fail(f"refcount order {h.refcount_order} is not supported "
                       f"({min(REFCOUNT_FORMATS)}-{max(REFCOUNT_FORMATS)} are)")
        order = h.refcount_order if h.version == 3 else 4
        self.refcount = struct.Struct(">" + REFCOUNT_FORMATS[order])
        self.refblock_bits = self.cluster_bits + 3 - order
        if h.reftable_clusters * self.cluster_size > MAX_REFTABLE_BYTES:
            self._fail("its refcount table is larger than we accept")
        self.reftable_offset = h.reftable_offset
        self.reftable = self._table(h.reftable_offset,
                                    h.reftable_clusters * self.cluster_size // 8,
                                    "refcount table")
        self.next_free = -(-self.file_size // self.cluster_size)
        if h.autoclear:
            # Bits we do not know describe data we may now change: the
            # spec has a writer that does not know them clear them.
            os.pwrite(self.fd, bytes(8), HEADER.size + 16)
            os.fdatasync(self.fd)

    def _open_backing(self, raw: bytes, h: Header, fmt: str | None,
                      chain: tuple[str, ...]) -> core.Disk:
        end = h.backing_offset + h.backing_size
        if h.backing_size > MAX_BACKING_NAME or end > len(raw):
            self._fail("its backing file name is out of range")
        try:
            name = raw[h.backing_offset:end].decode()
        except UnicodeDecodeError:
            self._fail("its backing file name is not UTF-8")
        if not name or "\0" in name:
            self._fail("its backing file name is empty or holds a NUL")
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), name)
        if os.path.realpath(path) in chain:
            self._fail(f"its backing file {name} is already in its backing chain")
        if len(chain) >= MAX_CHAIN:
            self._fail(f"its backing chain is deeper than {MAX_CHAIN}")
        if fmt == "raw":
            return RawDisk(path, readonly=True)
        if fmt not in (None, "qcow2"):
            self._fail(f"its backing file format {fmt!r} is not supported (raw and qcow2 are)")
        return core.open_format(path, True, False, chain)

    # -- mapping guest clusters ---------------------------------------------

    def _eio(self, why: str) -> OSError:
        """An I/O error for the guest; said once per disk, as the guest
        may ask again and again."""
        if not self.warned:
            self.warned = True
            msg.warning(f"disk image {self.path}: {why} (further errors not shown)")
        return OSError(errno.EIO, why)

    def _host(self, offset: int, what: str) -> int:
        """A cluster offset from the image's tables, checked (cluster 0 is
        the header: no table points there)."""
        if not offset or offset % self.cluster_size or offset >= self.file_size:
            raise self._eio(f"{what} at {offset:#x} is misaligned or past the end of the file")
        return offset

    def _writable_in_place(self, host: int) -> int:
        """A data cluster about to be overwritten: not one of the tables
        we hold (L2 tables and refcount blocks are not checked)."""
        self._host(host, "a data cluster")
        for start, length in ((self.l1_offset, len(self.l1) * 8),
                              (self.reftable_offset, len(self.reftable) * 8)):
            if start - self.cluster_size < host < start + length:
                raise self._eio(f"a data cluster at {host:#x} overlaps the image's tables")
        return host

    def _l2_table(self, l2: int) -> array:
        table = self.l2_cache.get(l2)
        if table is None:
            self._host(l2, "an L2 table")
            data = os.pread(self.fd, self.cluster_size, l2)
            if len(data) != self.cluster_size:
                raise self._eio(f"the L2 table at {l2:#x} is cut short by the end of the file")
            table = array("Q", data)
            table.byteswap()
            self.l2_cache[l2] = table
            if len(self.l2_cache) > self.l2_cache_tables:
                self.l2_cache.popitem(last=False)
        else:
            self.l2_cache.move_to_end(l2)
        return table

    def _entry(self, cluster: int) -> int:
        l2 = self.l1[cluster >> self.l2_bits] & OFFSET_MASK
        if not l2:
            return 0
        return self._l2_table(l2)[cluster & ((1 << self.l2_bits) - 1)]

    # -- reading --------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise OSError(errno.EIO, "past the end of the disk")

    def readv(self, views: list[memoryview], offset: int) -> None:
        length = total(views)
        self._check(offset, length)
        for cluster, start, n in self._clusters(offset, length):
            part, views = split(views, n)
            self._read(part, cluster, start, self._entry(cluster))

    def _clusters(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(cluster, offset in it, bytes) for each cluster [offset, +length) touches."""
        end = offset + length
        while offset < end:
            start = offset & (self.cluster_size - 1)
            n = min(self.cluster_size - start, end - offset)
            yield offset >> self.cluster_bits, start, n
            offset += n

    def _read(self, views: list[memoryview], cluster: int, start: int, entry: int) -> None:
        if entry & COMPRESSED:
            data = self._decompress(entry)
            for v in views:
                v[:] = data[start:start + len(v)]
                start += len(v)
        elif entry & self.zero_flag:
            self._fill_zeros(views)
        elif entry & OFFSET_MASK:
            host = self._host(entry & OFFSET_MASK, "a data cluster")
            done = self._transfer(os.preadv, views, host + start)
            self._fill_zeros(advance(views, done))  # a last cluster the file cuts short
        else:
            self._read_backing(views, (cluster << self.cluster_bits) + start)

    def _read_backing(self, views: list[memoryview], offset: int) -> None:
        have = 0 if self.backing is None else max(0, min(total(views),
                                                         self.backing.size - offset))
        inside, beyond = split(views, have)
        if inside:
            self.backing.readv(inside, offset)
        self._fill_zeros(beyond)

    def _fill_zeros(self, views: list[memoryview]) -> None:
        for v in views:
            v[:] = memoryview(self.zeros)[:len(v)]

    def _decompress(self, entry: int) -> bytes:
        """A compressed cluster: raw deflate from a byte offset, over a
        count of 512-byte sectors (the first one partly)."""
        shift = 62 - (self.cluster_bits - 8)
        offset = entry & ((1 << shift) - 1)
        if offset == self.compressed_cache[0]:
            return self.compressed_cache[1]
        sectors = (entry >> shift) & ((1 << (62 - shift)) - 1)
        length = (sectors + 1) * 512 - (offset & 511)
        if offset >= self.file_size or length > self.cluster_size + MAX_COMPRESSED_EXTRA:
            raise self._eio(f"a compressed cluster at {offset:#x} is out of range")
        try:
            d = zlib.decompressobj(-15)
            data = d.decompress(os.pread(self.fd, length, offset), self.cluster_size)
        except zlib.error:
            data = b""
        if len(data) != self.cluster_size:
            raise self._eio(f"the compressed cluster at {offset:#x} does not inflate")
        self.compressed_cache = (offset, data)
        return data

    def _transfer(self, op: object, views: list[memoryview], offset: int) -> int:
        """preadv/pwritev all of it; the bytes done (less only at EOF)."""
        views, done = [v for v in views if len(v)], 0
        while views:
            n = op(self.fd, views[:IOV_MAX], offset + done)
            if n == 0:
                if op is os.pwritev:
                    raise OSError(errno.EIO, "short write")
                break
            done += n
            views = advance(views, n)
        return done

    # -- writing --------------------------------------------------------------

    def writev(self, views: list[memoryview], offset: int) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only disk")
        self._check(offset, total(views))
        fresh = []
        for cluster, start, n in self._clusters(offset, total(views)):
            part, views = split(views, n)
            entry = self._entry(cluster)
            if entry & COPIED and not entry & (COMPRESSED | self.zero_flag):
                host = self._writable_in_place(entry & OFFSET_MASK)
                self._transfer(os.pwritev, part, host + start)
            else:
                fresh.append((cluster, start, part, entry))
        if fresh:
            self._write_fresh(fresh)

    def _write_fresh(self, fresh: list[tuple[int, int, list[memoryview], int]]) -> None:
        """Clusters with no writable host cluster yet: in the order that
        keeps every state on the way consistent (see the top)."""
        tables = {}
        for cluster, *_ in fresh:
            index = cluster >> self.l2_bits
            if not self.l1[index] & OFFSET_MASK and index not in tables:
                tables[index] = self._alloc()
        hosts = [self._alloc() for _ in fresh]
        for table in tables.values():
            self._pwrite(self.zeros, table)
        for (cluster, start, part, entry), host in zip(fresh, hosts, strict=True):
            if start == 0 and total(part) == self.cluster_size:
                self._transfer(os.pwritev, part, host)
                self.file_size = max(self.file_size, host + self.cluster_size)
                continue
            data = bytearray(self.cluster_size)
            self._read([memoryview(data)], cluster, 0, entry)
            for v in part:
                data[start:start + len(v)] = v
                start += len(v)
            self._pwrite(data, host)
        os.fdatasync(self.fd)       # counts, tables and data before what points to them
        for index, table in tables.items():
            self.l1[index] = table | COPIED
            self._pwrite(U64.pack(table | COPIED), self.l1_offset + index * 8)
        for (cluster, *_), host in zip(fresh, hosts, strict=True):
            self._set_l2(cluster, host | COPIED)
        replaced = [entry for _, _, _, entry in fresh if entry & OFFSET_MASK]
        if replaced:
            os.fdatasync(self.fd)
            for entry in replaced:
                self._unref(entry)

    def _pwrite(self, data: bytes, offset: int) -> None:
        self._transfer(os.pwritev, [memoryview(data)], offset)
        self.file_size = max(self.file_size, offset + len(data))

    def _set_l2(self, cluster: int, entry: int) -> None:
        l2 = self.l1[cluster >> self.l2_bits] & OFFSET_MASK
        index = cluster & ((1 << self.l2_bits) - 1)
        self._l2_table(l2)[index] = entry
        self._pwrite(U64.pack(entry), l2 + index * 8)

    # -- reference counts -----------------------------------------------------

    def _refcount_at(self, cluster: int) -> int:
        """Where `cluster`'s refcount is in the file (0: no block yet)."""
        index = cluster >> self.refblock_bits
        if index >= len(self.reftable):
            self._grow_reftable(index)
        block = self.reftable[index] & ~0x1FF
        if not block:
            return 0
        self._host(block, "a refcount block")
        return block + (cluster & ((1 << self.refblock_bits) - 1)) * self.refcount.size

    def _grow_reftable(self, index: int) -> None:
        """A refcount table with room for `index`, at the end of the file:
        its clusters, and new refcount blocks for them where their range
        has none, counted; the whole written; then the header switched to
        it in one write; then the old table's clusters freed."""
        cs, per_block = self.cluster_size, 1 << self.refblock_bits
        entries = max(2 * len(self.reftable), index + 1)
        clusters = -(-entries * 8 // cs)
        if clusters * cs > MAX_REFTABLE_BYTES:
            raise self._eio("the refcount table would grow larger than we accept")
        table = array("Q", self.reftable)
        table.extend([0] * (clusters * cs // 8 - len(table)))
        start = end = self.next_free
        end += clusters
        blocks: dict[int, bytearray] = {}   # range -> its new block's contents
        cluster = start
        while cluster < end:                # new blocks land at the end and need counts too
            r = cluster >> self.refblock_bits
            if r >= len(table):
                raise self._eio("the refcount table cannot cover itself")
            if not table[r] & ~0x1FF and r not in blocks:
                blocks[r] = bytearray(cs)
                table[r] = end << self.cluster_bits
                end += 1
            cluster += 1
        for cluster in range(start, end):
            r = cluster >> self.refblock_bits
            at = (cluster & (per_block - 1)) * self.refcount.size
            if r in blocks:
                self.refcount.pack_into(blocks[r], at, 1)
            else:
                self._pwrite(self.refcount.pack(1), (table[r] & ~0x1FF) + at)
        for r, block in blocks.items():
            self._pwrite(block, table[r])
        swapped = array("Q", table)
        swapped.byteswap()
        self._pwrite(swapped.tobytes(), start << self.cluster_bits)
        os.fdatasync(self.fd)
        old = range(self.reftable_offset >> self.cluster_bits,
                    (self.reftable_offset >> self.cluster_bits) + len(self.reftable) * 8 // cs)
        self._pwrite(REFTABLE_FIELDS.pack(start << self.cluster_bits, clusters),
                     REFTABLE_FIELDS_AT)
        os.fdatasync(self.fd)
        self.reftable, self.reftable_offset, self.next_free = table, start << self.cluster_bits, end
        for cluster in old:
            self._unref(cluster << self.cluster_bits)

    def _get_refcount(self, at: int) -> int:
        raw = os.pread(self.fd, self.refcount.size, at)
        if len(raw) != self.refcount.size:
            raise self._eio(f"a refcount at {at:#x} is past the end of the file")
        return self.refcount.unpack(raw)[0]

    def _alloc(self) -> int:
        """A host cluster from the end of the file, its refcount set to
        one (nothing points to it yet)."""
        while True:
            cluster = self.next_free
            self.next_free += 1
            at = self._refcount_at(cluster)
            if not at:
                self._new_refblock(cluster)
            elif self._get_refcount(at) == 0:
                self._pwrite(self.refcount.pack(1), at)
                return cluster << self.cluster_bits

    def _new_refblock(self, cluster: int) -> None:
        """Make `cluster` the refcount block of the range it falls in,
        counting itself; written before the table points to it."""
        block = bytearray(self.cluster_size)
        self.refcount.pack_into(block, (cluster & ((1 << self.refblock_bits) - 1)) *
                                self.refcount.size, 1)
        self._pwrite(block, cluster << self.cluster_bits)
        os.fdatasync(self.fd)
        index = cluster >> self.refblock_bits
        self.reftable[index] = cluster << self.cluster_bits
        self._pwrite(U64.pack(cluster << self.cluster_bits), self.reftable_offset + index * 8)

    def _unref(self, entry: int) -> None:
        """Drop the count of the host clusters an entry used."""
        if entry & COMPRESSED:
            shift = 62 - (self.cluster_bits - 8)
            first = entry & ((1 << shift) - 1)
            sectors = (entry >> shift) & ((1 << (62 - shift)) - 1)
            last = (first & ~511) + (sectors + 1) * 512 - 1
        else:
            first = last = entry & OFFSET_MASK
        for cluster in range(first >> self.cluster_bits, (last >> self.cluster_bits) + 1):
            at = self._refcount_at(cluster)
            count = self._get_refcount(at) if at else 0
            if count:
                self._pwrite(self.refcount.pack(count - 1), at)

    # -- the rest of the disk protocol ---------------------------------------

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not offered on qcow2")

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        raise OSError(errno.EOPNOTSUPP, "not offered on qcow2")

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
