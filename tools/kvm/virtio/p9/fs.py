"""Host-side file operations, confined to the shared root.

Nothing here takes a path with more than one component from the guest.
Names are looked up one at a time with O_PATH|O_NOFOLLOW relative to a
directory descriptor, so a symlink is returned as itself (the guest
resolves it) and never followed on the host, and a name swapped for a
symlink between two calls still cannot lead outside.  Objects are reopened
for I/O through /proc/self/fd, which reaches exactly the inode the O_PATH
descriptor pins, after checking its type: a device node, whether it was
there before or the guest made it, is never opened on the host.

Metadata changes (chown, chmod, utimes, truncate) go through the same
/proc/self/fd path.  For the O_PATH descriptor of a symlink the kernel
stops at the link itself: chown and utimes change the link, chmod fails
with EOPNOTSUPP, truncate with EINVAL and open with ELOOP (seen on 6.18;
test_p9_security checks it wherever the tests run).
"""

import contextlib
import errno
import os
import stat

PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_OFFSET = (1 << 63) - 1

QTDIR = 0x80
QTSYMLINK = 0x02
QTFILE = 0x00
QTYPES = {stat.S_IFDIR: QTDIR, stat.S_IFLNK: QTSYMLINK}

# Which objects may be opened for I/O, and the error for those that may not.
OPEN_REFUSED = {
    stat.S_IFREG: 0,
    stat.S_IFDIR: 0,
    stat.S_IFLNK: errno.ELOOP,
    stat.S_IFCHR: errno.EPERM,
    stat.S_IFBLK: errno.EPERM,
    stat.S_IFIFO: errno.EPERM,
    stat.S_IFSOCK: errno.ENXIO,
}

# Which objects mknod may make.
MKNOD_REFUSED = {
    0: 0,
    stat.S_IFREG: 0,
    stat.S_IFIFO: 0,
    stat.S_IFSOCK: 0,
    stat.S_IFCHR: errno.EPERM,
    stat.S_IFBLK: errno.EPERM,
}

# 9P2000.L open flags we pass on, as the host spells them.  The rest
# (create, excl, noctty, cloexec, direct, async, noatime, nofollow,
# largefile) either make no sense for a reopen or are the server's choice.
DOTL_FLAGS = {
    0o1: os.O_WRONLY,
    0o2: os.O_RDWR,
    0o1000: os.O_TRUNC,
    0o2000: os.O_APPEND,
    0o4000: os.O_NONBLOCK,
    0o10000: os.O_DSYNC,
    0o200000: os.O_DIRECTORY,
    0o4000000: os.O_SYNC,
}
DOTL_ACCMODE = 0o3
DOTL_EXCL = 0o200
DOTL_WRITES = 0o1 | 0o2 | 0o1000 | 0o2000


def fail(err: int) -> None:
    raise OSError(err, os.strerror(err))


def proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def check_name(name: bytes) -> bytes:
    """A single directory entry name, or EINVAL."""
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        fail(errno.EINVAL)
    return name


def lookup(dirfd: int, name: bytes) -> int:
    """An O_PATH descriptor for name in dirfd; a symlink stays a symlink."""
    return os.open(check_name(name), PATH_FLAGS, dir_fd=dirfd)


def resolve(root: int, path: tuple[bytes, ...]) -> int:
    """Walk path from root one component at a time."""
    fd = os.dup(root)
    try:
        for name in path:
            fd, parent = lookup(fd, name), fd
            os.close(parent)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_root(root: str) -> int:
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def qid(st: os.stat_result) -> tuple[int, int, int]:
    return QTYPES.get(stat.S_IFMT(st.st_mode), QTFILE), 0, st.st_ino


def host_flags(dotl: int) -> int:
    if dotl & DOTL_ACCMODE == DOTL_ACCMODE:
        fail(errno.EINVAL)
    flags = os.O_CLOEXEC | os.O_NOCTTY
    for bit, host in DOTL_FLAGS.items():
        if dotl & bit:
            flags |= host
    return flags


def reopen(fd: int, flags: int) -> int:
    """Open the object fd pins for I/O, if it is a file or directory."""
    err = OPEN_REFUSED.get(stat.S_IFMT(os.stat(fd).st_mode), errno.EPERM)
    if err:
        fail(err)
    return os.open(proc(fd), flags)


def create(dirfd: int, name: bytes, flags: int, mode: int, excl: bool) -> tuple[int, bool]:
    """Open name in dirfd, creating it if absent: (fd, whether created).

    An existing name is only opened through reopen(), so lcreate on a
    device node or a symlink left there is refused, not followed.
    """
    check_name(name)
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                       mode, dir_fd=dirfd), True
    except FileExistsError:
        if excl:
            raise
    pfd = lookup(dirfd, name)
    try:
        return reopen(pfd, flags), False
    finally:
        os.close(pfd)


def settle(fd: int, mode: int | None, uid: int, gid: int, umask: int) -> None:
    """Give a new object the owner and mode the guest asked for.

    chown may fail when we are not root; the object then stays ours, as in
    kvmtool.  chown clears set-id bits and our umask trimmed the mode, so
    the mode is put back when either could have changed it.
    """
    with contextlib.suppress(PermissionError):
        os.chown(proc(fd), uid, gid)
    if mode is not None and mode & (umask | stat.S_ISUID | stat.S_ISGID):
        os.chmod(proc(fd), mode)


def offset(off: int) -> int:
    if off > MAX_OFFSET:
        fail(errno.EINVAL)
    return off


def set_times(fd: int, atime: int | None, mtime: int | None) -> None:
    """Set either time in ns, leaving a None one as it is.

    os.utime has no UTIME_OMIT, so the time kept is read back first.
    """
    st = os.stat(fd)
    os.utime(proc(fd), ns=(st.st_atime_ns if atime is None else atime,
                           st.st_mtime_ns if mtime is None else mtime))


def dtype(entry: os.DirEntry) -> int:
    """The DT_* type of a directory entry (S_IFMT >> 12)."""
    if entry.is_symlink():
        return stat.S_IFLNK >> 12
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR >> 12
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG >> 12
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12


def listdir(fd: int) -> list[tuple[tuple[int, int, int], int, bytes]]:
    """(qid, type, name) of every entry of the open directory fd."""
    os.lseek(fd, 0, os.SEEK_SET)
    with os.scandir(fd) as it:
        entries = []
        for e in it:
            t = dtype(e)
            q = QTYPES.get(t << 12, QTFILE), 0, e.inode()
            entries.append((q, t, os.fsencode(e.name)))
    return entries
