"""A 9P2000.L file server over a host directory.

Server.handle() takes one whole T-message and returns one whole R-message;
the transport (virtio-9p) only moves bytes.  Requests are parsed by the
layout wire.LAYOUTS gives their type, handed to the handler OPS names, and
the fields the handler returns are packed by the reply's layout.  Every
failure, a malformed message included, becomes an Rlerror with a Linux
errno: nothing raises to the caller.
"""

import errno
import logging
import os
import stat
import time

from include.uapi import lib

from . import fs, wire
from .fids import Fid, FidTable
from .wire import LAYOUTS, Msg

log = logging.getLogger(__name__)

VERSION = b"9P2000.L"
MIN_MSIZE = 4096                # Linux's own floor; also fits a PATH_MAX readlink
MAX_MSIZE = 512 * 1024
RREAD_HEADER = wire.HEADER.size + 4     # size type tag count

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
AT_REMOVEDIR = 0x200
LOCK_TYPES = (0, 1, 2)          # rdlck, wrlck, unlck
LOCK_UNLCK = 2
LOCK_SUCCESS = 0


def _id(n: int) -> int:
    """A uid or gid from the wire; all ones means "leave it"."""
    return -1 if n == 0xFFFFFFFF else n


def _ns(sec: int, nsec: int) -> int:
    if nsec >= 1_000_000_000:
        fs.fail(errno.EINVAL)
    return (sec - (1 << 64) if sec >> 63 else sec) * 1_000_000_000 + nsec


class Server:
    """One 9P session serving the directory root."""

    def __init__(self, root: str, readonly: bool = False) -> None:
        self.root = fs.open_root(root)
        self.readonly = readonly
        self.fids = FidTable(self.root)
        self.msize = MAX_MSIZE
        self.ready = False      # no requests but Tversion until negotiated
        # Reading the umask means setting it; done once, before any I/O thread.
        self.umask = os.umask(0o22)
        os.umask(self.umask)

    def close(self) -> None:
        self.fids.clear()
        os.close(self.root)

    def handle(self, request: bytes | memoryview) -> bytes:
        """Answer one T-message with one R-message, never raising."""
        tag = wire.NOTAG
        try:
            size, mtype, tag = wire.header(request)
            self.fids.trim()
            return self._dispatch(mtype, tag, size, request)
        except OSError as e:
            err = e.errno or errno.EIO
        except (OverflowError, ValueError):
            err = errno.EINVAL          # a guest number the host can't hold
        except Exception:
            log.exception("9p: request failed")
            err = errno.EIO
        return wire.rlerror(tag, err)

    def _dispatch(self, mtype: int, tag: int, size: int, request) -> bytes:
        if size != len(request):
            raise wire.ProtocolError("size field disagrees with message")
        if size > self.msize:
            fs.fail(errno.EMSGSIZE)
        op = OPS.get(mtype)
        if op is None:
            fs.fail(errno.EOPNOTSUPP)
        handler, writes = op
        if not self.ready and mtype != Msg.TVERSION:
            raise wire.ProtocolError("no version negotiated")
        if writes and self.readonly:
            fs.fail(errno.EROFS)
        req_layout, reply_layout = LAYOUTS[mtype]
        fields = wire.unpack(req_layout, memoryview(request)[wire.HEADER.size:])
        reply = wire.message(mtype + 1, tag, wire.pack(reply_layout, *handler(self, *fields)))
        if len(reply) > self.msize:
            fs.fail(errno.EMSGSIZE)
        return reply

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
        fd, path, qids = os.dup(src.fd), src.path, []
        try:
            for name in names:
                if name == b"..":
                    path = path[:-1]    # lexical, so the root is its own parent
                    nfd = fs.resolve(self.root, path)
                else:
                    nfd = fs.lookup(fd, name)
                    path += (name,)
                os.close(fd)
                fd = nfd
                qids.append(fs.qid(os.stat(fd)))
        except OSError:
            os.close(fd)
            if not qids:
                raise
            return (qids,)          # a partial walk creates no fid
        self.fids.put(newfid, Fid(fd, path, src.uid))
        return (qids,)

    def getattr(self, fid, mask):
        st = os.stat(self.fids.get(fid).fd)
        m = 0xFFFFFFFFFFFFFFFF
        return (GETATTR_BASIC, fs.qid(st), st.st_mode, st.st_uid, st.st_gid,
                st.st_nlink, st.st_rdev & m, st.st_size, st.st_blksize, st.st_blocks,
                *(t & m for t in divmod(st.st_atime_ns, 1_000_000_000)),
                *(t & m for t in divmod(st.st_mtime_ns, 1_000_000_000)),
                *(t & m for t in divmod(st.st_ctime_ns, 1_000_000_000)),
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

    def read(self, fid, offset, count):
        count = min(count, self.msize - RREAD_HEADER)
        return (os.pread(self._open_file(fid), count, fs.offset(offset)),)

    def write(self, fid, offset, data):
        return (os.pwrite(self._open_file(fid), data, fs.offset(offset)),)

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
            ent = wire.pack(wire.DIRENT, q, i + 1, t, name)
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


# message type -> (handler, whether a read-only share refuses it).  Tauth is
# not here: there is no authentication, and unknown types get EOPNOTSUPP.
OPS = {
    Msg.TVERSION: (Server.version, False),
    Msg.TATTACH: (Server.attach, False),
    Msg.TFLUSH: (Server.flush, False),
    Msg.TCLUNK: (Server.clunk, False),
    Msg.TWALK: (Server.walk, False),
    Msg.TGETATTR: (Server.getattr, False),
    Msg.TSETATTR: (Server.setattr, True),
    Msg.TREADLINK: (Server.readlink, False),
    Msg.TSTATFS: (Server.statfs, False),
    Msg.TLOPEN: (Server.lopen, False),
    Msg.TLCREATE: (Server.lcreate, True),
    Msg.TREAD: (Server.read, False),
    Msg.TWRITE: (Server.write, True),
    Msg.TFSYNC: (Server.fsync, False),
    Msg.TREADDIR: (Server.readdir, False),
    Msg.TLOCK: (Server.lock, False),
    Msg.TGETLOCK: (Server.getlock, False),
    Msg.TMKDIR: (Server.mkdir, True),
    Msg.TSYMLINK: (Server.symlink, True),
    Msg.TMKNOD: (Server.mknod, True),
    Msg.TLINK: (Server.link, True),
    Msg.TRENAME: (Server.rename, True),
    Msg.TRENAMEAT: (Server.renameat, True),
    Msg.TUNLINKAT: (Server.unlinkat, True),
    Msg.TREMOVE: (Server.remove, True),
    Msg.TXATTRWALK: (Server.xattrwalk, False),
    Msg.TXATTRCREATE: (Server.xattrcreate, True),
}
