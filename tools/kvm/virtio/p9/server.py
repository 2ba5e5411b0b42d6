"""A 9P2000.L file server over a host directory.

Server.serve() answers the T-message a transport's readable buffers hold
with an R-message written into its writable ones (virtio-9p hands it the
guest's buffers); Server.handle() does the same for a message in hand.
Requests are parsed by the layout wire.LAYOUTS gives their type (through
the codecs compiled from it, wire.CODECS), handed to the handler OPS
names, and the fields the handler returns are packed by the reply's
layout.  Tread and Twrite (DATA_OPS) skip that: their data
moves between the file and the buffers by preadv/pwritev, never copied
through Python.  Every failure, a malformed message included, becomes an
Rlerror with a Linux errno: nothing raises to the caller.
"""

import errno
import logging
import os
import stat
import struct
import time

from include.uapi import lib
from virtio import iov

from . import fs, wire
from .fids import Fid, FidTable
from .wire import Msg

log = logging.getLogger(__name__)

VERSION = b"9P2000.L"
MIN_MSIZE = 4096                # Linux's own floor; also fits a PATH_MAX readlink
MAX_MSIZE = 512 * 1024
RREAD_HEADER = wire.HEADER.size + 4     # size type tag count
# The fixed part of Tread and Twrite (fid offset count), and the whole of
# Rread's header and of Rwrite.
IO_FIELDS = struct.Struct("<IQI")
IO_HEADER = wire.HEADER.size + IO_FIELDS.size
RREAD = struct.Struct("<IBHI")
RWRITE = struct.Struct("<IBHI")

# Tsetattr valid bits.
SET_MODE = 0x1
SET_UID = 0x2
SET_GID = 0x4
SET_SIZE = 0x8
SET_ATIME = 0x10
SET_MTIME = 0x20
SET_ATIME_SET = 0x80
SET_MTIME_SET = 0x100

GETATTR_BASIC = 0x7FF           # mode..blocks: everything stat() gives
NS = 1_000_000_000
U64 = (1 << 64) - 1             # times before 1970 go out as two's complement
AT_REMOVEDIR = 0x200
LOCK_TYPES = (0, 1, 2)          # rdlck, wrlck, unlck
LOCK_UNLCK = 2
LOCK_SUCCESS = 0


def _id(n: int) -> int:
    """A uid or gid from the wire; all ones means "leave it"."""
    return -1 if n == 0xFFFFFFFF else n


def _ns(sec: int, nsec: int) -> int:
    if nsec >= NS:
        fs.fail(errno.EINVAL)
    return (sec - (1 << 64) if sec >> 63 else sec) * NS + nsec


class Server:
    """One 9P session serving the directory root."""

    def __init__(self, root: str, readonly: bool = False) -> None:
        self.root = fs.open_root(root)
        self.readonly = readonly
        self.fids = FidTable(self.root)
        self.msize = MAX_MSIZE
        self.ready = False      # no requests but Tversion until negotiated
        self._reply: memoryview | None = None   # handle()'s buffer: no reply is longer
        # Reading the umask means setting it; done once, before any I/O thread.
        self.umask = os.umask(0o22)
        os.umask(self.umask)

    def close(self) -> None:
        self.fids.clear()
        os.close(self.root)

    def serve(self, readable: list[memoryview], writable: list[memoryview]) -> int:
        """Answer the T-message in `readable` with an R-message written
        into `writable`; the bytes written.  Never raises.

        Of the request no more than msize bytes are copied, and of a
        Tread or Twrite only the fixed fields, whatever the buffers name.
        """
        tag = wire.NOTAG
        try:
            # The header, and all of a Tread, Twrite's fixed fields or a
            # short message (Tclunk, Tgetattr ...) in one copy.
            head = iov.prefix(readable, IO_HEADER)
            size, mtype, tag = wire.header(head)
            self.fids.trim()
            self._admit(mtype, size, iov.total(readable))
            direct = DATA_OPS.get(mtype)
            if direct is not None:
                return direct(self, tag, size, head, readable, writable)
            request = head if size <= len(head) else iov.prefix(readable, size)
            reply = self._dispatch(mtype, tag, request)
        except OSError as e:
            reply = wire.rlerror(tag, e.errno or errno.EIO)
        except (OverflowError, ValueError):
            reply = wire.rlerror(tag, errno.EINVAL)   # a guest number the host can't hold
        except Exception:
            log.exception("9p: request failed")
            reply = wire.rlerror(tag, errno.EIO)
        return iov.scatter(writable, reply)

    def handle(self, request: bytes | memoryview) -> bytes:
        """serve() for one whole T-message in hand: its R-message."""
        if self._reply is None:     # made on first use: the device never needs it
            self._reply = memoryview(bytearray(MAX_MSIZE))
        return bytes(self._reply[:self.serve([memoryview(request)], [self._reply])])

    def _admit(self, mtype: int, size: int, total: int) -> None:
        """Refuse a request its header alone rules out."""
        if size != total:
            raise wire.ProtocolError("size field disagrees with message")
        if size > self.msize:
            fs.fail(errno.EMSGSIZE)
        if mtype not in OPS and mtype not in DATA_OPS:
            fs.fail(errno.EOPNOTSUPP)
        if not self.ready and mtype != Msg.TVERSION:
            raise wire.ProtocolError("no version negotiated")
        if mtype in WRITES and self.readonly:
            fs.fail(errno.EROFS)

    def _dispatch(self, mtype: int, tag: int, request: bytes) -> bytes:
        decode, encode = wire.CODECS[mtype]
        reply = encode(mtype + 1, tag, OPS[mtype](self, *decode(request)))
        if len(reply) > self.msize:
            fs.fail(errno.EMSGSIZE)
        return reply

    @staticmethod
    def _io_fields(head: bytes) -> tuple[int, int, int]:
        """fid, offset and count of a Tread or Twrite."""
        if len(head) < IO_HEADER:
            raise wire.ProtocolError("message too short")
        return IO_FIELDS.unpack_from(head, wire.HEADER.size)

    # Session

    def version(self, msize, version):
        self.fids.clear()       # a new version starts a new session
        self.ready = False
        if msize < MIN_MSIZE:
            fs.fail(errno.EINVAL)
        self.msize = min(msize, MAX_MSIZE)
        if version != VERSION:
            return self.msize, b"unknown"
        self.ready = True
        return self.msize, VERSION

    def attach(self, fid, afid, uname, aname, n_uname):
        self.fids.check_free(fid)
        if aname not in (b"", b"/"):
            fs.fail(errno.ENOENT)
        self.fids.put(fid, Fid(os.dup(self.root), (), _id(n_uname)))
        return (fs.qid(os.stat(self.root)),)

    def flush(self, oldtag):
        return ()                       # requests are answered in order

    def clunk(self, fid):
        self.fids.clunk(fid)
        return ()

    # Lookup

    def walk(self, fid, newfid, names):
        src = self.fids.get(fid)
        if newfid != fid:
            self.fids.check_free(newfid)
        fd, path, qids = src.fd, src.path, []
        owned = False           # fd is src's own until a name is walked
        try:
            for name in names:
                if name == b"..":
                    path = path[:-1]    # lexical, so the root is its own parent
                    nfd = fs.resolve(self.root, path)
                else:
                    nfd = fs.lookup(fd, name)
                    path += (name,)
                if owned:
                    os.close(fd)
                fd, owned = nfd, True
                qids.append(fs.qid(os.stat(fd)))
        except OSError:
            if owned:
                os.close(fd)
            if not qids:
                raise
            return (qids,)          # a partial walk creates no fid
        self.fids.put(newfid, Fid(fd if owned else os.dup(fd), path, src.uid))
        return (qids,)

    def getattr(self, fid, mask):
        st = os.stat(self.fids.get(fid).fd)
        atime, atime_ns = divmod(st.st_atime_ns, NS)
        mtime, mtime_ns = divmod(st.st_mtime_ns, NS)
        ctime, ctime_ns = divmod(st.st_ctime_ns, NS)
        return (GETATTR_BASIC, fs.qid(st), st.st_mode, st.st_uid, st.st_gid,
                st.st_nlink, st.st_rdev & U64, st.st_size, st.st_blksize, st.st_blocks,
                atime & U64, atime_ns, mtime & U64, mtime_ns, ctime & U64, ctime_ns,
                0, 0, 0, 0)

    def setattr(self, fid, valid, mode, uid, gid, size, asec, ansec, msec, mnsec):
        f = self.fids.get(fid)
        # Through /proc/self/fd the inode f.fd pins is changed; for a
        # symlink that is the link itself, never its target.
        path = fs.proc(f.fd)
        if valid & (SET_UID | SET_GID):
            os.chown(path, _id(uid) if valid & SET_UID else -1,
                     _id(gid) if valid & SET_GID else -1)
        if valid & SET_MODE:
            os.chmod(path, stat.S_IMODE(mode))
        if valid & SET_SIZE:
            os.truncate(path, fs.offset(size))
        if valid & (SET_ATIME | SET_MTIME):
            now = time.time_ns()
            times = [None, None]
            for i, (on, given, sec, nsec) in enumerate(
                    ((SET_ATIME, SET_ATIME_SET, asec, ansec),
                     (SET_MTIME, SET_MTIME_SET, msec, mnsec))):
                if valid & on:
                    times[i] = _ns(sec, nsec) if valid & given else now
            fs.set_times(f.fd, *times)
        return ()

    def readlink(self, fid):
        return (os.readlink(b"", dir_fd=self.fids.get(fid).fd),)

    def statfs(self, fid):
        sv = os.statvfs(self.fids.get(fid).fd)
        return (lib.V9FS_MAGIC, sv.f_bsize, sv.f_blocks, sv.f_bfree, sv.f_bavail,
                sv.f_files, sv.f_ffree, sv.f_fsid, sv.f_namemax)

    # I/O

    def lopen(self, fid, flags):
        f = self.fids.get(fid)
        if f.opened:
            fs.fail(errno.EBADF)
        if self.readonly and flags & fs.DOTL_WRITES:
            fs.fail(errno.EROFS)
        host = fs.host_flags(flags)
        f.open(fs.reopen(f.fd, host), host)
        return fs.qid(os.stat(f.fd)), 0

    def lcreate(self, fid, name, flags, mode, gid):
        f = self.fids.get(fid)
        if f.opened:
            fs.fail(errno.EBADF)
        host = fs.host_flags(flags)
        fd, created = fs.create(f.fd, name, host, stat.S_IMODE(mode), bool(flags & fs.DOTL_EXCL))
        try:
            if created:
                fs.settle(fd, stat.S_IMODE(mode), f.uid, _id(gid), self.umask)
            pfd = os.open(fs.proc(fd), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        f.repoint(pfd, f.path + (name,))
        f.open(fd, host)
        return fs.qid(os.stat(fd)), 0

    def _open_file(self, fid) -> int:
        f = self.fids.get(fid)
        if not f.opened:
            fs.fail(errno.EBADF)
        return f.file

    def read(self, tag, size, head, readable, writable) -> int:
        """Tread: the file's bytes go straight into the buffers after
        Rread's header, as many as the count, msize and the buffers allow."""
        if size != IO_HEADER:
            raise wire.ProtocolError("Tread of the wrong size")
        fid, offset, count = self._io_fields(head)
        fd = self._open_file(fid)
        rhead, into = iov.split(writable, RREAD_HEADER)
        count = min(count, self.msize - RREAD_HEADER)
        if iov.total(into) > count:     # Linux gives no more than it asks for
            into, _ = iov.split(into, count)
        n = os.preadv(fd, into, fs.offset(offset))     # no more views than the queue has
        return iov.scatter(rhead, RREAD.pack(RREAD_HEADER + n, Msg.TREAD + 1, tag, n)) + n

    def write(self, tag, size, head, readable, writable) -> int:
        """Twrite: the data goes from the buffers after its fixed fields
        straight to the file."""
        fid, offset, count = self._io_fields(head)
        if count != size - IO_HEADER:
            raise wire.ProtocolError("Twrite count disagrees with message")
        fd = self._open_file(fid)
        n = os.pwritev(fd, iov.advance(readable, IO_HEADER), fs.offset(offset))
        return iov.scatter(writable, RWRITE.pack(RWRITE.size, Msg.TWRITE + 1, tag, n))

    def fsync(self, fid, datasync):
        (os.fdatasync if datasync else os.fsync)(self._open_file(fid))
        return ()

    def readdir(self, fid, offset, count):
        f = self.fids.get(fid)
        if offset == 0 or not f.dirents:
            f.dirents = self._snapshot(f, self._open_file(fid))
        budget = min(count, self.msize - RREAD_HEADER)
        out = []
        for i in range(min(offset, len(f.dirents)), len(f.dirents)):
            q, t, name = f.dirents[i]
            ent = wire.dirent(q, i + 1, t, name)
            if len(ent) > budget:
                break
            budget -= len(ent)
            out.append(ent)
        return (b"".join(out),)

    def _snapshot(self, f: Fid, dirfd: int) -> list:
        """The directory's entries with '.' and '..'; offsets index this."""
        if f.path:
            parent = fs.qid(os.stat(b"..", dir_fd=dirfd, follow_symlinks=False))
        else:
            parent = fs.qid(os.stat(self.root))
        dot = fs.qid(os.stat(f.fd))
        dt_dir = stat.S_IFDIR >> 12
        return [(dot, dt_dir, b"."), (parent, dt_dir, b".."), *fs.listdir(dirfd)]

    def lock(self, fid, ltype, flags, start, length, proc_id, client_id):
        # The guest kernel arbitrates between its own processes before it
        # asks; we serve one guest, so there is nobody else to conflict with.
        self._open_file(fid)
        if ltype not in LOCK_TYPES:
            fs.fail(errno.EINVAL)
        return (LOCK_SUCCESS,)

    def getlock(self, fid, ltype, start, length, proc_id, client_id):
        self._open_file(fid)
        if ltype not in LOCK_TYPES:
            fs.fail(errno.EINVAL)
        return LOCK_UNLCK, start, length, proc_id, client_id

    # Namespace changes

    def _made(self, dirfd: int, name: bytes, uid: int, gid: int, mode) -> tuple:
        """Settle the new dirfd/name and answer with its qid."""
        fd = fs.lookup(dirfd, name)
        try:
            fs.settle(fd, mode, uid, _id(gid), self.umask)
            return (fs.qid(os.stat(fd)),)
        finally:
            os.close(fd)

    def mkdir(self, dfid, name, mode, gid):
        d = self.fids.get(dfid)
        os.mkdir(fs.check_name(name), stat.S_IMODE(mode), dir_fd=d.fd)
        return self._made(d.fd, name, d.uid, gid, stat.S_IMODE(mode))

    def symlink(self, fid, name, target, gid):
        d = self.fids.get(fid)
        os.symlink(target, fs.check_name(name), dir_fd=d.fd)
        return self._made(d.fd, name, d.uid, gid, None)

    def mknod(self, dfid, name, mode, major, minor, gid):
        d = self.fids.get(dfid)
        err = fs.MKNOD_REFUSED.get(stat.S_IFMT(mode), errno.EINVAL)
        if err:
            fs.fail(err)
        os.mknod(fs.check_name(name), mode, 0, dir_fd=d.fd)
        return self._made(d.fd, name, d.uid, gid, stat.S_IMODE(mode))

    def link(self, dfid, fid, name):
        d, f = self.fids.get(dfid), self.fids.get(fid)
        # linkat of the pinned inode itself, not of whatever its name is now.
        os.link(fs.proc(f.fd), fs.check_name(name), dst_dir_fd=d.fd)
        return ()

    def _locate(self, f: Fid) -> int:
        """The parent directory of f, checked to still hold f under its name."""
        if not f.path:
            fs.fail(errno.EBUSY)
        parent = fs.resolve(self.root, f.path[:-1])
        try:
            there = os.stat(f.path[-1], dir_fd=parent, follow_symlinks=False)
            here = os.stat(f.fd)
            if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino):
                fs.fail(errno.ESTALE)
        except OSError:
            os.close(parent)
            raise
        return parent

    def _rename(self, olddir: int, oldpath, oldname, newdir: int, newpath, newname):
        os.rename(fs.check_name(oldname), fs.check_name(newname),
                  src_dir_fd=olddir, dst_dir_fd=newdir)
        self.fids.renamed(oldpath + (oldname,), newpath + (newname,))

    def rename(self, fid, dfid, name):
        f, d = self.fids.get(fid), self.fids.get(dfid)
        parent = self._locate(f)
        try:
            self._rename(parent, f.path[:-1], f.path[-1], d.fd, d.path, name)
        finally:
            os.close(parent)
        return ()

    def renameat(self, olddirfid, oldname, newdirfid, newname):
        o, n = self.fids.get(olddirfid), self.fids.get(newdirfid)
        self._rename(o.fd, o.path, oldname, n.fd, n.path, newname)
        return ()

    def unlinkat(self, dirfd, name, flags):
        d = self.fids.get(dirfd)
        if flags & ~AT_REMOVEDIR:
            fs.fail(errno.EINVAL)
        (os.rmdir if flags else os.unlink)(fs.check_name(name), dir_fd=d.fd)
        return ()

    def remove(self, fid):
        f = self.fids.get(fid)
        try:
            parent = self._locate(f)
            try:
                isdir = stat.S_ISDIR(os.stat(f.fd).st_mode)
                (os.rmdir if isdir else os.unlink)(f.path[-1], dir_fd=parent)
            finally:
                os.close(parent)
        finally:
            self.fids.clunk(fid)        # remove clunks even when it fails
        return ()

    # Extended attributes are not offered; Linux treats that as "none".

    def xattrwalk(self, fid, newfid, name):
        self.fids.get(fid)
        fs.fail(errno.EOPNOTSUPP)

    def xattrcreate(self, fid, name, size, flags):
        self.fids.get(fid)
        fs.fail(errno.EOPNOTSUPP)


# message type -> handler of its fields.  Tauth is not here: there is no
# authentication, and unknown types get EOPNOTSUPP.
OPS = {
    Msg.TVERSION: Server.version,
    Msg.TATTACH: Server.attach,
    Msg.TFLUSH: Server.flush,
    Msg.TCLUNK: Server.clunk,
    Msg.TWALK: Server.walk,
    Msg.TGETATTR: Server.getattr,
    Msg.TSETATTR: Server.setattr,
    Msg.TREADLINK: Server.readlink,
    Msg.TSTATFS: Server.statfs,
    Msg.TLOPEN: Server.lopen,
    Msg.TLCREATE: Server.lcreate,
    Msg.TFSYNC: Server.fsync,
    Msg.TREADDIR: Server.readdir,
    Msg.TLOCK: Server.lock,
    Msg.TGETLOCK: Server.getlock,
    Msg.TMKDIR: Server.mkdir,
    Msg.TSYMLINK: Server.symlink,
    Msg.TMKNOD: Server.mknod,
    Msg.TLINK: Server.link,
    Msg.TRENAME: Server.rename,
    Msg.TRENAMEAT: Server.renameat,
    Msg.TUNLINKAT: Server.unlinkat,
    Msg.TREMOVE: Server.remove,
    Msg.TXATTRWALK: Server.xattrwalk,
    Msg.TXATTRCREATE: Server.xattrcreate,
}

# Tread and Twrite: handlers of the buffers themselves.
DATA_OPS = {
    Msg.TREAD: Server.read,
    Msg.TWRITE: Server.write,
}

# What a read-only share refuses.
WRITES = frozenset({
    Msg.TSETATTR,
    Msg.TLCREATE,
    Msg.TMKDIR,
    Msg.TSYMLINK,
    Msg.TMKNOD,
    Msg.TLINK,
    Msg.TRENAME,
    Msg.TRENAMEAT,
    Msg.TUNLINKAT,
    Msg.TREMOVE,
    Msg.TXATTRCREATE,
    Msg.TWRITE,
})
