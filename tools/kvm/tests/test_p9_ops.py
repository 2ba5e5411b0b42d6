"""Every 9P2000.L message, round trip through Server.handle on a tmp tree."""

import errno
import os
import shutil
import stat
import tempfile

import pytest

from virtio.p9 import Server
from virtio.p9.client import Client, dirents
from virtio.p9.fs import QTDIR, QTFILE, QTSYMLINK
from virtio.p9.wire import NOFID, Msg

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_DIRECTORY = 0, 1, 2, 0o100, 0o1000, 0o200000
ALL = 0x3FFF
NOBODY = 65534


def path(share, *names):
    return os.path.join(share.root, *names)


def test_version_negotiates_msize(share):
    c = share.client(msize=1 << 30)
    assert c.msize == 512 * 1024
    assert c.rpc(Msg.TVERSION, 8192, b"9P2000.L") == [8192, b"9P2000.L"]


def test_version_other_dialects_are_unknown(share):
    c = share.client()
    assert c.rpc(Msg.TVERSION, 8192, b"9P2000.u") == [8192, b"unknown"]
    with pytest.raises(OSError) as e:
        c.rpc(Msg.TATTACH, 0, NOFID, b"", b"", 0)
    assert e.value.errno == errno.EPROTO


def test_version_clunks_every_fid(c):
    c.walk(0, 1)
    c.rpc(Msg.TVERSION, 8192, b"9P2000.L")
    with pytest.raises(OSError, match="Bad file"):
        c.rpc(Msg.TCLUNK, 1)


def test_attach(c, share):
    (q,) = c.rpc(Msg.TATTACH, 5, NOFID, b"someone", b"/", 1000)
    assert q == (QTDIR, 0, os.stat(share.root).st_ino)
    with pytest.raises(OSError) as e:
        c.rpc(Msg.TATTACH, 6, NOFID, b"", b"/etc", 0)
    assert e.value.errno == errno.ENOENT


def test_walk_clone_and_names(c, share):
    assert c.walk(0, 1) == []
    qids = c.walk(0, 2, b"dir")
    assert qids == [(QTDIR, 0, os.stat(path(share, "dir")).st_ino)]
    os.mkdir(path(share, "dir", "sub"))
    assert [q[0] for q in c.walk(0, 3, b"dir", b"sub", b"..", b"sub")] == [QTDIR] * 4
    assert c.walk(3, 3, b"..", b"..") != []     # walking a fid onto itself


def test_walk_partial_creates_no_fid(c):
    assert len(c.walk(0, 1, b"dir", b"nope")) == 1
    with pytest.raises(OSError, match="Bad file"):
        c.rpc(Msg.TCLUNK, 1)
    with pytest.raises(FileNotFoundError):
        c.walk(0, 1, b"nope")


def test_walks_hold_one_fd_per_fid(c, share):
    # Whole, partial, failed and empty walks, onto new fids and onto
    # themselves: once clunked, no descriptor is left behind.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    os.mkdir(path(share, "dir", "sub"))
    before = open_fds()
    c.walk(0, 1)
    c.walk(0, 2, b"dir", b"sub", b"..", b"..")
    c.walk(2, 2, b"file")
    assert len(c.walk(0, 3, b"dir", b"sub", b"nope")) == 2
    with pytest.raises(FileNotFoundError):
        c.walk(1, 3, b"nope")
    with pytest.raises(OSError):
        c.walk(1, 3, b"a/b")
    assert open_fds() == before + 2
    c.rpc(Msg.TCLUNK, 1)
    c.rpc(Msg.TCLUNK, 2)
    assert open_fds() == before


def test_getattr_times_before_1970(c, share):
    os.utime(path(share, "file"), ns=(-1_500_000_000, -2))
    c.walk(0, 1, b"file")
    r = c.rpc(Msg.TGETATTR, 1, ALL)
    assert r[10:14] == [2**64 - 2, 500_000_000, 2**64 - 1, 999_999_998]


def test_getattr(c, share):
    c.walk(0, 1, b"file")
    st = os.stat(path(share, "file"))
    r = c.rpc(Msg.TGETATTR, 1, ALL)
    assert r[0] == 0x7FF
    assert r[1] == (QTFILE, 0, st.st_ino)
    assert r[2:8] == [st.st_mode, st.st_uid, st.st_gid, st.st_nlink, 0, 10]
    assert r[12] * 10**9 + r[13] == st.st_mtime_ns


def test_setattr(c, share):
    c.walk(0, 1, b"file")
    valid = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x80 | 0x100
    c.rpc(Msg.TSETATTR, 1, valid, 0o4640, 123, 456, 3, 5, 6, 7, 8)
    st = os.stat(path(share, "file"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o4640, 123, 456, 3)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_006, 7_000_000_008)
    c.rpc(Msg.TSETATTR, 1, 0x20, 0, 0, 0, 0, 0, 0, 0, 0)    # mtime = now, atime kept
    st = os.stat(path(share, "file"))
    assert st.st_atime_ns == 5_000_000_006 and st.st_mtime_ns > 7_000_000_008


def test_setattr_negative_time(c, share):
    c.walk(0, 1, b"file")
    c.rpc(Msg.TSETATTR, 1, 0x20 | 0x100, 0, 0, 0, 0, 0, 0, (-2) & (2**64 - 1), 0)
    assert os.stat(path(share, "file")).st_mtime_ns == -2 * 10**9


def test_lopen_read_write_fsync(c, share):
    c.walk(0, 1, b"file")
    assert c.rpc(Msg.TLOPEN, 1, O_RDWR)[0][0] == QTFILE
    assert c.rpc(Msg.TREAD, 1, 2, 3) == [b"234"]
    assert c.rpc(Msg.TREAD, 1, 100, 3) == [b""]
    assert c.rpc(Msg.TWRITE, 1, 8, b"abcd") == [4]
    c.rpc(Msg.TFSYNC, 1, 0)
    c.rpc(Msg.TFSYNC, 1, 1)
    with open(path(share, "file"), "rb") as f:
        assert f.read() == b"01234567abcd"
    with pytest.raises(OSError, match="Bad file"):      # already open
        c.rpc(Msg.TLOPEN, 1, O_RDONLY)


def test_lopen_truncates(c, share):
    c.walk(0, 1, b"file")
    c.rpc(Msg.TLOPEN, 1, O_WRONLY | O_TRUNC)
    assert os.path.getsize(path(share, "file")) == 0


def test_read_clamps_to_msize(share):
    with open(path(share, "big"), "wb") as f:
        f.write(b"x" * 100_000)
    c = share.client(msize=8192)
    c.walk(0, 1, b"big")
    c.rpc(Msg.TLOPEN, 1, O_RDONLY)
    (data,) = c.rpc(Msg.TREAD, 1, 0, 0xFFFFFFFF)
    assert len(data) == 8192 - 11
    assert c.read_all(1) == b"x" * 100_000


def test_io_needs_an_open_fid(c):
    c.walk(0, 1, b"file")
    for mtype, *args in ((Msg.TREAD, 0, 1), (Msg.TWRITE, 0, b"x"), (Msg.TFSYNC, 0),
                         (Msg.TLOCK, 0, 0, 0, 0, 1, b"x"), (Msg.TGETLOCK, 0, 0, 0, 1, b"x")):
        with pytest.raises(OSError, match="Bad file"):
            c.rpc(mtype, 1, *args)


def test_lcreate_owns_and_opens(c, share):
    c.rpc(Msg.TATTACH, 9, NOFID, b"", b"", 1234)
    c.walk(9, 1)
    q, _ = c.rpc(Msg.TLCREATE, 1, b"new", O_RDWR | O_CREAT, 0o4751, 77)
    st = os.stat(path(share, "new"))
    assert q == (QTFILE, 0, st.st_ino)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4751, 1234, 77)
    assert c.rpc(Msg.TWRITE, 1, 0, b"hello") == [5]
    assert c.rpc(Msg.TREAD, 1, 0, 100) == [b"hello"]
    assert c.rpc(Msg.TGETATTR, 1, ALL)[1] == q     # the fid is the new file now


def test_lcreate_existing(c, share):
    c.walk(0, 1)
    c.rpc(Msg.TLCREATE, 1, b"file", O_RDONLY | O_CREAT, 0o644, 0)
    assert c.rpc(Msg.TREAD, 1, 0, 3) == [b"012"]
    c.walk(0, 2)
    with pytest.raises(FileExistsError):
        c.rpc(Msg.TLCREATE, 2, b"file", O_RDONLY | O_CREAT | 0o200, 0o644, 0)


def test_readdir(c, share):
    for i in range(300):
        open(path(share, "dir", f"entry-{i:03}"), "w").close()
    c.walk(0, 1, b"dir")
    c.rpc(Msg.TLOPEN, 1, O_DIRECTORY)
    names = [e[3] for e in c.readdir_all(1)]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == [b"entry-%03d" % i for i in range(300)]
    (data,) = c.rpc(Msg.TREADDIR, 1, 0, 100)
    assert 0 < len(data) <= 100 and len(dirents(data)) >= 2
    assert c.rpc(Msg.TREADDIR, 1, 2**64 - 1, 1000) == [b""]


def test_readdir_root_dotdot_is_root(c, share):
    c.walk(0, 1)
    c.rpc(Msg.TLOPEN, 1, O_DIRECTORY)
    ents = {e[3]: e for e in c.readdir_all(1)}
    root_ino = os.stat(share.root).st_ino
    assert ents[b".."][0][2] == root_ino
    assert ents[b"abs"][2] == stat.S_IFLNK >> 12
    assert ents[b"abs"][0][0] == QTSYMLINK
    assert ents[b"dir"][2] == stat.S_IFDIR >> 12


def test_mkdir_symlink_mknod_link(c, share):
    c.rpc(Msg.TATTACH, 9, NOFID, b"", b"", 321)
    q = c.rpc(Msg.TMKDIR, 9, b"d", 0o2755, 55)[0]
    st = os.stat(path(share, "d"))
    assert q == (QTDIR, 0, st.st_ino)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2755, 321, 55)
    q = c.rpc(Msg.TSYMLINK, 9, b"s", b"/anything/at/all", 56)[0]
    st = os.lstat(path(share, "s"))
    assert q[0] == QTSYMLINK and (st.st_uid, st.st_gid) == (321, 56)
    c.rpc(Msg.TMKNOD, 9, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 57)
    assert stat.S_ISFIFO(os.lstat(path(share, "fifo")).st_mode)
    c.rpc(Msg.TMKNOD, 9, b"sock", stat.S_IFSOCK | 0o600, 0, 0, 57)
    assert stat.S_ISSOCK(os.lstat(path(share, "sock")).st_mode)
    c.walk(0, 1, b"file")
    c.walk(0, 2, b"d")
    c.rpc(Msg.TLINK, 2, 1, b"hard")
    assert os.stat(path(share, "d", "hard")).st_ino == os.stat(path(share, "file")).st_ino


def test_readlink(c):
    c.walk(0, 1, b"rel")
    assert c.rpc(Msg.TREADLINK, 1) == [b"../outside"]


def test_rename_follows_fids(c, share):
    c.walk(0, 1, b"dir")
    os.mkdir(path(share, "dir", "sub"))
    c.walk(1, 2, b"sub")
    c.walk(0, 3)
    c.rpc(Msg.TRENAME, 1, 3, b"moved")
    assert os.path.isdir(path(share, "moved", "sub"))
    c.rpc(Msg.TREMOVE, 2)          # found under its new name
    assert os.listdir(path(share, "moved")) == []


def test_renameat_unlinkat(c, share):
    c.walk(0, 1, b"dir")
    c.rpc(Msg.TRENAMEAT, 0, b"file", 1, b"f2")
    assert os.path.exists(path(share, "dir", "f2"))
    c.rpc(Msg.TUNLINKAT, 1, b"f2", 0)
    c.rpc(Msg.TUNLINKAT, 0, b"dir", 0x200)
    assert not os.path.exists(path(share, "dir"))


def test_remove_clunks(c, share):
    c.walk(0, 1, b"file")
    c.rpc(Msg.TREMOVE, 1)
    assert not os.path.exists(path(share, "file"))
    with pytest.raises(OSError, match="Bad file"):
        c.rpc(Msg.TCLUNK, 1)


def test_statfs(c, share):
    r = c.rpc(Msg.TSTATFS, 0)
    sv = os.statvfs(share.root)
    assert r[0] == 0x01021997 and r[1] == sv.f_bsize and r[8] == sv.f_namemax


def test_lock_getlock(c):
    c.walk(0, 1, b"file")
    c.rpc(Msg.TLOPEN, 1, O_RDWR)
    assert c.rpc(Msg.TLOCK, 1, 1, 0, 0, 0, 42, b"guest") == [0]
    assert c.rpc(Msg.TGETLOCK, 1, 1, 10, 20, 42, b"guest") == [2, 10, 20, 42, b"guest"]
    with pytest.raises(OSError) as e:
        c.rpc(Msg.TLOCK, 1, 7, 0, 0, 0, 42, b"guest")
    assert e.value.errno == errno.EINVAL


def test_xattr_not_supported(c):
    for mtype, args in ((Msg.TXATTRWALK, (0, 1, b"user.x")),
                        (Msg.TXATTRCREATE, (0, b"user.x", 1, 0))):
        with pytest.raises(OSError) as e:
            c.rpc(mtype, *args)
        assert e.value.errno == errno.EOPNOTSUPP


def test_flush_and_clunk(c):
    assert c.rpc(Msg.TFLUSH, 3) == []
    c.walk(0, 1)
    assert c.rpc(Msg.TCLUNK, 1) == []


def test_handle_takes_a_memoryview(share):
    c = Client(lambda m: share.server.handle(memoryview(bytearray(m))))
    c.mount()
    assert c.walk(0, 1, b"dir")[0][0] == QTDIR


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_unprivileged_create_keeps_our_owner():
    # tmp_path sits under a 0700 directory, out of reach once we drop root.
    base = tempfile.mkdtemp()
    os.chmod(base, 0o755)
    os.chown(base, NOBODY, NOBODY)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            c = Client(Server(base).handle)
            c.mount(uid=1234)
            c.walk(0, 1)
            c.rpc(Msg.TLCREATE, 1, b"f", O_RDWR | O_CREAT, 0o640, 77)
            c.rpc(Msg.TMKDIR, 0, b"d", 0o750, 77)
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    for name, mode in (("f", 0o640), ("d", 0o750)):
        st = os.stat(os.path.join(base, name))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, mode)
    shutil.rmtree(base)
