"""Hostile guests: escapes, symlink races, device nodes, read-only, bad bytes."""

import errno
import os
import stat
import struct

import pytest

from tests.p9share import SECRET, Share
from virtio.p9.client import parse
from virtio.p9.fs import QTDIR, QTSYMLINK
from virtio.p9.wire import NOFID, NOTAG, Msg, message, pack

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND = 0, 1, 2, 0o100, 0o1000, 0o2000


def errno_of(c, mtype, *fields) -> int:
    with pytest.raises(OSError) as e:
        c.rpc(mtype, *fields)
    return e.value.errno


def test_dotdot_at_root_stays_at_root(c, share):
    root = (QTDIR, 0, os.stat(share.root).st_ino)
    assert c.walk(0, 1, *[b".."] * 16) == [root] * 16
    c.walk(1, 2, b"dir", b"..", b"..", b"..")
    c.rpc(Msg.TLOPEN, 2, 0o200000)
    assert {e[3] for e in c.readdir_all(2)} >= {b"dir", b"file", b"abs"}
    c.walk(0, 3, b"dir", b"..", b"..")
    assert errno_of(c, Msg.TWALK, 3, 4, [b"outside"]) == errno.ENOENT


@pytest.mark.parametrize("name", [b"", b".", b"../outside", b"/", b"/etc",
                                  b"dir/..", b"a\0b", b"..\0", b"outside/"])
def test_bad_names_refused(c, name):
    assert errno_of(c, Msg.TWALK, 0, 1, [name]) == errno.EINVAL
    assert errno_of(c, Msg.TMKDIR, 0, name, 0o755, 0) in (errno.EINVAL, errno.EEXIST)
    assert errno_of(c, Msg.TRENAMEAT, 0, b"file", 0, name) in (errno.EINVAL, errno.EEXIST)
    assert errno_of(c, Msg.TUNLINKAT, 0, name, 0) == errno.EINVAL
    assert errno_of(c, Msg.TSYMLINK, 0, name, b"/", 0) == errno.EINVAL


@pytest.mark.parametrize("link", [b"abs", b"rel"])
def test_symlinks_to_outside_are_not_followed(c, link):
    (q,) = c.walk(0, 1, link)
    assert q[0] == QTSYMLINK
    assert c.walk(0, 2, link, b"secret") == [q]        # stops at the link
    assert errno_of(c, Msg.TCLUNK, 2) == errno.EBADF
    assert errno_of(c, Msg.TLOPEN, 1, O_RDONLY) == errno.ELOOP
    assert stat.S_ISLNK(c.rpc(Msg.TGETATTR, 1, 0x7FF)[2])
    assert errno_of(c, Msg.TLCREATE, 1, b"x", O_RDWR | O_CREAT, 0o644, 0) == errno.ENOTDIR
    assert errno_of(c, Msg.TMKDIR, 1, b"x", 0o755, 0) == errno.ENOTDIR


def test_symlink_to_secret_is_not_opened_or_created_through(c):
    c.walk(0, 1)
    assert errno_of(c, Msg.TLCREATE, 1, b"abs_secret", O_RDWR | O_CREAT | O_TRUNC,
                    0o644, 0) == errno.ELOOP
    c.walk(0, 2, b"abs_secret")
    assert errno_of(c, Msg.TLOPEN, 2, O_RDONLY) == errno.ELOOP
    assert c.rpc(Msg.TREADLINK, 2)[0].endswith(b"outside/secret")


def test_setattr_on_symlink_touches_only_the_link(c, share):
    c.walk(0, 1, b"abs_secret")
    assert errno_of(c, Msg.TSETATTR, 1, 0x1, 0o777, 0, 0, 0, 0, 0, 0, 0) == errno.EOPNOTSUPP
    assert errno_of(c, Msg.TSETATTR, 1, 0x8, 0, 0, 0, 0, 0, 0, 0, 0) == errno.EINVAL
    c.rpc(Msg.TSETATTR, 1, 0x2 | 0x4, 0, 4321, 4321, 0, 0, 0, 0, 0)
    c.rpc(Msg.TSETATTR, 1, 0x30 | 0x180, 0, 0, 0, 0, 9, 0, 9, 0)
    st = os.lstat(os.path.join(share.root, "abs_secret"))
    assert (st.st_uid, st.st_mtime_ns) == (4321, 9 * 10**9)


def test_link_to_symlink_links_the_symlink(c, share):
    c.walk(0, 1, b"abs_secret")
    c.rpc(Msg.TLINK, 0, 1, b"hard")
    assert os.path.islink(os.path.join(share.root, "hard"))


def test_symlink_swap_under_a_walked_fid(c, share):
    c.walk(0, 1, b"dir")
    os.rename(os.path.join(share.root, "dir"), os.path.join(share.root, "dir2"))
    os.symlink(share.outside, os.path.join(share.root, "dir"))
    # The fid still names the directory it walked to, not the new symlink.
    c.rpc(Msg.TMKDIR, 1, b"made", 0o755, 0)
    assert os.path.isdir(os.path.join(share.root, "dir2", "made"))
    assert errno_of(c, Msg.TWALK, 1, 2, [b"secret"]) == errno.ENOENT
    assert c.walk(0, 2, b"dir", b"secret")[0][0] == QTSYMLINK
    assert errno_of(c, Msg.TCLUNK, 2) == errno.EBADF
    assert errno_of(c, Msg.TUNLINKAT, 1, b"secret", 0) == errno.ENOENT


def test_swapped_name_is_not_removed_or_renamed(c, share):
    c.walk(0, 1, b"file")
    c.walk(0, 2, b"dir")
    os.rename(os.path.join(share.root, "file"), os.path.join(share.root, "elsewhere"))
    os.symlink(os.path.join(share.outside, "secret"), os.path.join(share.root, "file"))
    assert errno_of(c, Msg.TRENAME, 1, 2, b"moved") == errno.ESTALE
    assert errno_of(c, Msg.TREMOVE, 1) == errno.ESTALE
    assert os.path.islink(os.path.join(share.root, "file"))


def test_remove_root_refused(c, share):
    c.walk(0, 1, b"dir", b"..", b"..")
    assert errno_of(c, Msg.TREMOVE, 1) == errno.EBUSY
    assert errno_of(c, Msg.TRENAME, 0, 0, b"x") == errno.EBUSY
    assert os.path.isdir(share.root)


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_device_nodes_are_never_opened(c, share, kind):
    # A pre-existing node (as a hostile image would carry): /dev/null's or
    # loop0's numbers.  EPERM is ours: the host would have opened these.
    dev = os.makedev(1, 3) if kind == stat.S_IFCHR else os.makedev(7, 0)
    os.mknod(os.path.join(share.root, "dev"), kind | 0o666, dev)
    c.walk(0, 1, b"dev")
    for flags in (O_RDONLY, O_WRONLY, O_RDWR | O_TRUNC):
        assert errno_of(c, Msg.TLOPEN, 1, flags) == errno.EPERM
    c.walk(0, 2)
    assert errno_of(c, Msg.TLCREATE, 2, b"dev", O_RDWR | O_CREAT, 0o644, 0) == errno.EPERM
    assert errno_of(c, Msg.TSETATTR, 1, 0x8, 0, 0, 0, 0, 0, 0, 0, 0) == errno.EINVAL
    # nor made by the guest
    assert errno_of(c, Msg.TMKNOD, 0, b"mine", kind | 0o666, 1, 3, 0) == errno.EPERM
    assert not os.path.lexists(os.path.join(share.root, "mine"))


def test_fifo_can_be_made_but_not_opened(c, share):
    c.rpc(Msg.TMKNOD, 0, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    c.walk(0, 1, b"fifo")
    assert errno_of(c, Msg.TLOPEN, 1, O_RDONLY) == errno.EPERM     # would block us
    assert errno_of(c, Msg.TMKNOD, 0, b"d", stat.S_IFDIR | 0o755, 0, 0, 0) == errno.EINVAL


def test_readonly_share_refuses_every_write(tmp_path):
    s = Share(tmp_path, readonly=True)
    c = s.client()
    before = sorted(os.walk(s.root))
    c.walk(0, 1, b"file")
    c.walk(0, 2, b"dir")
    c.walk(0, 3)
    writes = [
        (Msg.TLOPEN, 1, O_WRONLY), (Msg.TLOPEN, 1, O_RDWR), (Msg.TLOPEN, 1, O_TRUNC),
        (Msg.TLOPEN, 1, O_APPEND),
        (Msg.TLCREATE, 3, b"new", O_RDWR | O_CREAT, 0o644, 0),
        (Msg.TMKDIR, 0, b"new", 0o755, 0),
        (Msg.TSYMLINK, 0, b"new", b"file", 0),
        (Msg.TMKNOD, 0, b"new", stat.S_IFIFO | 0o644, 0, 0, 0),
        (Msg.TLINK, 0, 1, b"new"),
        (Msg.TRENAME, 1, 0, b"new"),
        (Msg.TRENAMEAT, 0, b"file", 0, b"new"),
        (Msg.TUNLINKAT, 0, b"file", 0),
        (Msg.TSETATTR, 1, 0x1, 0o777, 0, 0, 0, 0, 0, 0, 0),
        (Msg.TSETATTR, 1, 0x8, 0, 0, 0, 0, 0, 0, 0, 0),
        (Msg.TSETATTR, 1, 0x30, 0, 0, 0, 0, 0, 0, 0, 0),
        (Msg.TXATTRCREATE, 1, b"user.x", 1, 0),
        (Msg.TREMOVE, 2),
    ]
    for mtype, *fields in writes:
        assert errno_of(c, mtype, *fields) == errno.EROFS, mtype
    c.walk(0, 4, b"file")
    c.rpc(Msg.TLOPEN, 4, O_RDONLY)
    assert c.rpc(Msg.TREAD, 4, 0, 100) == [b"0123456789"]
    assert errno_of(c, Msg.TWRITE, 4, 0, b"x") == errno.EROFS
    assert sorted(os.walk(s.root)) == before
    s.check()
    s.close()


def raw(share, msg: bytes) -> tuple[int, int, list]:
    reply = share.server.handle(msg)
    assert len(reply) <= share.server.msize
    return parse(reply)


def rlerror(share, msg: bytes, tag: int = 1) -> int:
    rtype, rtag, fields = raw(share, msg)
    assert (rtype, rtag) == (Msg.RLERROR, tag)
    return fields[0]


def test_messages_before_version(share):
    assert rlerror(share, message(Msg.TATTACH, 1, pack("ddssd", 0, NOFID, b"", b"", 0))) \
        == errno.EPROTO


def test_tversion_msize_too_small(share):
    assert rlerror(share, message(Msg.TVERSION, 1, pack("ds", 100, b"9P2000.L"))) \
        == errno.EINVAL


MALFORMED = {
    "empty": (b"", NOTAG, errno.EPROTO),
    "short header": (b"\x07\x00\x00", NOTAG, errno.EPROTO),
    "size too big": (struct.pack("<IBHI", 100, Msg.TCLUNK, 1, 0), 1, errno.EPROTO),
    "size too small": (struct.pack("<IBHI", 7, Msg.TCLUNK, 1, 0), 1, errno.EPROTO),
    "truncated body": (message(Msg.TCLUNK, 1, b"\0\0"), 1, errno.EPROTO),
    "trailing bytes": (message(Msg.TCLUNK, 1, b"\0" * 5), 1, errno.EPROTO),
    "string past end": (message(Msg.TWALK, 1, pack("ddw", 0, 1, 1) + b"\xff\xff.."),
                        1, errno.EPROTO),
    "17 walk names": (message(Msg.TWALK, 1, pack("ddS", 0, 1, [b"a"] * 16)[:8]
                              + b"\x11\x00" + pack("s", b"a") * 17), 1, errno.E2BIG),
    "write count past end": (message(Msg.TWRITE, 1, pack("dqd", 0, 0, 1000) + b"xx"),
                             1, errno.EPROTO),
    "write count short": (message(Msg.TWRITE, 1, pack("dqd", 0, 0, 1) + b"xx"),
                          1, errno.EPROTO),
    "unknown type": (message(200, 1, b""), 1, errno.EOPNOTSUPP),
    "a reply type": (message(Msg.TWALK + 1, 1, b""), 1, errno.EOPNOTSUPP),
    "9P2000 Topen": (message(112, 1, pack("db", 0, 0)), 1, errno.EOPNOTSUPP),
    "Tauth": (message(Msg.TAUTH, 1, pack("dssd", 1, b"", b"", 0)), 1, errno.EOPNOTSUPP),
    "Tlerror": (message(Msg.TLERROR, 1, b""), 1, errno.EOPNOTSUPP),
    "bad fid": (message(Msg.TCLUNK, 1, pack("d", 99)), 1, errno.EBADF),
    "NOFID": (message(Msg.TGETATTR, 1, pack("dq", NOFID, 0)), 1, errno.EBADF),
    "attach fid in use": (message(Msg.TATTACH, 1, pack("ddssd", 0, NOFID, b"", b"", 0)),
                          1, errno.EBADF),
    "walk newfid in use": (message(Msg.TWALK, 1, pack("ddS", 0, 1, [])), 1, errno.EBADF),
    "walk to NOFID": (message(Msg.TWALK, 1, pack("ddS", 0, NOFID, [])), 1, errno.EBADF),
    "bad open mode": (message(Msg.TLOPEN, 1, pack("dd", 1, 3)), 1, errno.EINVAL),
    "bad unlinkat flags": (message(Msg.TUNLINKAT, 1, pack("dsd", 0, b"file", 1)),
                           1, errno.EINVAL),
    "nsec too big": (message(Msg.TSETATTR, 1, pack("dddddqqqqq", 0, 0xB0, 0, 0, 0, 0,
                                                   0, 10**9, 0, 0)), 1, errno.EINVAL),
    "huge size": (message(Msg.TSETATTR, 1, pack("dddddqqqqq", 1, 0x8, 0, 0, 0, 2**63,
                                                0, 0, 0, 0)), 1, errno.EINVAL),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed(share, name):
    c = share.client(msize=8192)
    c.walk(0, 1, b"file")
    msg, tag, err = MALFORMED[name]
    assert rlerror(share, msg, tag) == err
    assert c.rpc(Msg.TGETATTR, 0, 0x7FF)      # the session still works


def test_oversized_message(share):
    share.client(msize=8192)
    msg = message(Msg.TWRITE, 1, pack("dqD", 1, 0, b"x" * 9000))
    assert rlerror(share, msg) == errno.EMSGSIZE


@pytest.mark.parametrize("offset", [2**63, 2**64 - 1, (-1) & (2**64 - 1)])
def test_bad_offsets(c, offset):
    c.walk(0, 1, b"file")
    c.rpc(Msg.TLOPEN, 1, O_RDWR)
    assert errno_of(c, Msg.TREAD, 1, offset, 10) == errno.EINVAL
    assert errno_of(c, Msg.TWRITE, 1, offset, b"x") == errno.EINVAL


def test_counts_larger_than_msize_are_clamped(share):
    c = share.client(msize=4096)
    c.walk(0, 1, b"dir")
    for i in range(200):
        open(os.path.join(share.root, "dir", f"{i:0100}"), "w").close()
    c.rpc(Msg.TLOPEN, 1, 0o200000)
    (data,) = c.rpc(Msg.TREADDIR, 1, 0, 0xFFFFFFFF)
    assert 0 < len(data) <= 4096 - 11


def test_readlink_reply_larger_than_msize(share):
    os.symlink(b"x" * 4090, os.path.join(share.root, "long"))
    c = share.client(msize=4096)
    c.walk(0, 1, b"long")
    assert errno_of(c, Msg.TREADLINK, 1) == errno.EMSGSIZE


def test_secret_never_in_a_reply(c):
    for names in ([b"abs_secret"], [b"abs", b"secret"], [b"rel", b"secret"],
                  [b"..", b"outside", b"secret"]):
        try:
            c.walk(0, 1, *names)
            c.rpc(Msg.TLOPEN, 1, O_RDONLY)
            assert SECRET not in c.read_all(1)
        except OSError:
            pass
