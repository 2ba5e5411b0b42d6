"""Issue 11 item 5: a guest holding thousands of 9p fids cannot run lkvm
out of fds.  lkvm run takes the whole hard RLIMIT_NOFILE; a 9p session
holds at most its budget of fds (reopening by path past it) and at most
MAX_FIDS fids."""

import errno
import os
import resource
import subprocess

import pytest

from tests.helpers import LKVM, TINY_TIMEOUT, guest
from tests.p9share import Share
from tests.test_ipc_guests import read_until
from virtio.p9 import fids
from virtio.p9.wire import Msg

O_RDONLY, O_RDWR = 0, 2
FILES = 64


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def low_limit():
    """A soft fd limit of 512 while the test runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    yield 512
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def big_share(tmp_path, low_limit):
    """A share with FILES files, its server sized under the low limit."""
    s = Share(tmp_path)
    for i in range(FILES):
        with open(os.path.join(s.root, f"f{i}"), "wb") as f:
            f.write(b"file %d\n" % i)
    yield s
    s.check()
    s.close()


def test_twenty_thousand_fids_hold_a_bounded_number_of_fds(big_share, low_limit):
    c = big_share.client()
    budget = low_limit // 4         # what one share may hold, with room to spare
    before = open_fds()
    for n in range(1, 20_001):      # as a cache=loose guest keeps one per inode
        c.walk(0, n, b"dir" if n % 2 else b"file")
        if n % 1000 == 0:
            assert open_fds() <= before + budget
    # Every fid still works, the least recently used first: reopened by path.
    for n in (1, 2, 3, 19_999, 20_000):
        qtype = c.rpc(Msg.TGETATTR, n, 0x7FF)[1][0]
        assert qtype == (0x80 if n % 2 else 0)
    # Open files past the budget: each reopens with its flags, at its data.
    base = 30_000
    for i in range(FILES * 4):
        c.walk(0, base + i, b"f%d" % (i % FILES))
        c.rpc(Msg.TLOPEN, base + i, O_RDWR if i % 2 else O_RDONLY)
    for i in range(FILES * 4):
        assert c.rpc(Msg.TREAD, base + i, 0, 64)[0] == b"file %d\n" % (i % FILES)
    c.rpc(Msg.TWRITE, base + 1, 0, b"F")
    assert c.rpc(Msg.TREAD, base + 1 + 2 * FILES, 0, 1)[0] == b"F"
    assert open_fds() <= before + budget
    for n in range(1, 20_001):
        c.rpc(Msg.TCLUNK, n)
    for i in range(FILES * 4):
        c.rpc(Msg.TCLUNK, base + i)
    assert open_fds() <= before + 1     # the root fid's
    assert big_share.server.fids.held <= 1


def test_a_fid_whose_name_now_leads_elsewhere_is_stale(big_share):
    c = big_share.client()
    big_share.server.fids.budget = fids.MIN_BUDGET
    c.walk(0, 1, b"f1")
    for n in range(2, 2 + fids.MIN_BUDGET):     # push fid 1's fd out
        c.walk(0, n, b"dir")
    os.rename(os.path.join(big_share.root, "f2"), os.path.join(big_share.root, "f1"))
    with pytest.raises(OSError) as e:
        c.rpc(Msg.TLOPEN, 1, O_RDONLY)
    assert e.value.errno == errno.ESTALE


def test_fids_are_capped(big_share, monkeypatch):
    monkeypatch.setattr(fids, "MAX_FIDS", 100)
    c = big_share.client()
    for n in range(1, 100):
        c.walk(0, n)
    with pytest.raises(OSError) as e:
        c.walk(0, 100)
    assert e.value.errno == errno.EMFILE
    c.rpc(Msg.TCLUNK, 99)
    c.walk(0, 100)


def test_lkvm_run_takes_the_whole_hard_limit(lkvm_home, kvm_available):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    p = subprocess.Popen(
        [LKVM, "run", "-c", "1", "-m", "16", "--name", "fds", guest("idle")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    try:
        # The socket exists once devices are set up: the limit is raised by then.
        read_until(p.stderr, b"# lkvm run")
        with open(f"/proc/{p.pid}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        p.kill()
        p.wait(TINY_TIMEOUT)
        p.stderr.close()
