"""How lkvm run picks the guest's root from -d, -i and the kernel, the
command line that root gets, and the 9p shares it serves (no KVM here)."""

import errno
import importlib
import os
import stat

import pytest

from cli.cmd import load_builtin
from kvm.errors import KVMTOOL_DIE, LkvmError
from rootfs import guestroot, tree
from tests.helpers import guest, run_lkvm
from virtio.mock import mock_memory
from virtio.p9 import Server
from virtio.p9.client import Client
from virtio.p9.fs import QTSYMLINK
from virtio.p9.wire import Msg
from x86.cmdline import kernel_cmdline

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT = 0, 1, 2, 0o100
P9_FRAGMENT = "rw rootflags=trans=virtio,version=9p2000.L,cache=loose rootfstype=9p"
ROOTFS_FRAGMENT = f"{P9_FRAGMENT} init=/virt/init ip=dhcp"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_nothing_given_boots_the_default_rootfs(home):
    root = guestroot.choose([], initrd=False, linux=True)
    default = str(home / ".lkvm" / "default")
    assert root.shares == [guestroot.Share(default, "/dev/root"),
                           guestroot.Share("/", "hostfs", readonly=True)]
    assert root.cmdline == ROOTFS_FRAGMENT
    assert root.rootfs == default and root.name is None and root.disks == []
    assert os.path.isfile(os.path.join(default, "virt", "init"))


def test_no_dhcp_leaves_ip_dhcp_out(home):
    # kvmtool's --no-dhcp: the rootfs boots without the kernel's DHCP.
    root = guestroot.choose([], initrd=False, linux=True, dhcp=False)
    assert root.cmdline == ROOTFS_FRAGMENT.removesuffix(" ip=dhcp")


@pytest.mark.parametrize("disks,initrd,linux", [
    ([], True, True),           # the initrd is the root
    ([], False, False),         # a flat binary takes no command line
])
def test_no_default_rootfs(home, disks, initrd, linux):
    assert guestroot.choose(disks, initrd, linux) == guestroot.Root()
    assert not (home / ".lkvm").exists()


def test_a_file_is_a_disk_and_the_arch_default_root(home, tmp_path):
    (tmp_path / "a.img").write_bytes(bytes(512))
    root = guestroot.choose(["a.img", "a.img,ro"], initrd=False, linux=True)
    assert root == guestroot.Root(disks=["a.img", "a.img,ro"])
    assert kernel_cmdline("quiet", "serial", True, root.cmdline).endswith(
        "console=ttyS0 root=/dev/vda rw quiet")


def test_a_directory_is_the_root_with_its_own_init(home, tmp_path):
    (tmp_path / "tree").mkdir()
    root = guestroot.choose(["tree"], initrd=False, linux=True)
    assert root.shares == [guestroot.Share(str(tmp_path / "tree"), "/dev/root")]
    assert root.cmdline == P9_FRAGMENT
    assert root.rootfs is None


def test_a_rootfs_name_boots_it_and_names_the_guest(home, tmp_path):
    tree.create("box")
    (tmp_path / "img").write_bytes(bytes(512))
    root = guestroot.choose(["img", "box"], initrd=False, linux=True)
    assert root.disks == ["img"] and root.name == "box"
    assert root.shares[0] == guestroot.Share(str(home / ".lkvm" / "box"), "/dev/root")
    assert root.shares[1].tag == "hostfs" and root.shares[1].readonly
    # Like kvmtool, a directory of that name here comes first.
    (tmp_path / "box").mkdir()
    assert guestroot.choose(["box"], False, True).shares[0].path == str(tmp_path / "box")


@pytest.mark.parametrize("specs,message", [
    (["missing"], "--disk missing: no such file or directory, nor a rootfs in "),
    (["../escape"], "--disk ../escape: no such file or directory"),  # a path is no name
    (["tree", "tree"], "--disk tree: only one directory or rootfs can be the root"),
    (["tree,ro"], "--disk tree,ro: a directory root takes no options"),
])
def test_bad_roots(home, tmp_path, specs, message):
    (tmp_path / "tree").mkdir()
    (home / "escape").mkdir()           # ~/.lkvm/../escape, never a rootfs
    os.chdir(tmp_path / "tree")
    specs = [s.replace("tree", str(tmp_path / "tree")) for s in specs]
    message = message.replace("tree", str(tmp_path / "tree"))
    with pytest.raises(LkvmError, match="^" + message.replace("(", r"\(")):
        guestroot.choose(specs, initrd=False, linux=True)


def test_bad_root_is_one_fatal_line(tmp_path):
    r = run_lkvm("run", "-d", str(tmp_path / "nothing"), guest("hello"))
    assert r.returncode == KVMTOOL_DIE and b"Traceback" not in r.stderr
    assert r.stderr.decode().strip().startswith(
        f"Fatal: --disk {tmp_path}/nothing: no such file or directory")


@pytest.mark.parametrize("spec,share", [
    ("tree", guestroot.Share("TREE", None)),
    ("tree,tag", guestroot.Share("TREE", "tag")),
    ("tree,tag,ro", guestroot.Share("TREE", "tag", readonly=True)),
])
def test_parse_share(tmp_path, monkeypatch, spec, share):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree").mkdir()
    assert guestroot.parse_share(spec) == guestroot.Share(str(tmp_path / "tree"), share.tag,
                                                          share.readonly)


@pytest.mark.parametrize("spec", ["", ",tag", "tree,", "missing,tag", "tree,tag,rw",
                                  "tree,,ro", "tree,tag,ro,"])
def test_parse_share_refuses(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tree").mkdir()
    with pytest.raises(LkvmError, match="^--9p "):
        guestroot.parse_share(spec)


def test_rootfs_command_line_and_a_users_root_wins():
    line = kernel_cmdline("quiet", "serial", True, ROOTFS_FRAGMENT)
    assert line.endswith(f"console=ttyS0 {ROOTFS_FRAGMENT} quiet")
    line = kernel_cmdline("root=/dev/vdb", "serial", True, ROOTFS_FRAGMENT)
    assert line.endswith("console=ttyS0 root=/dev/vdb")


# The shares the default root gets, as the 9p server serves them.

def mount(share: guestroot.Share) -> Client:
    c = Client(Server(share.path, share.readonly).handle)
    c.mount()
    return c


def test_rootfs_share_serves_links_into_host_as_links(home):
    rootshare = guestroot.choose([], False, True).shares[0]
    c = mount(rootshare)
    qids = c.walk(0, 1, b"lib64")
    assert qids[0][0] == QTSYMLINK
    assert c.rpc(Msg.TREADLINK, 1) == [b"/host/lib64"]
    assert len(c.walk(0, 2, b"bin", b"sh")) == 1    # never followed on the host
    # The guest's /tmp: create, rename, delete; sticky for its users.
    c.walk(0, 3, b"tmp")
    assert stat.S_IMODE(c.rpc(Msg.TGETATTR, 3, 0x7FF)[2]) == 0o1777
    c.rpc(Msg.TLCREATE, 3, b"f", O_RDWR | O_CREAT, 0o644, 0)
    c.rpc(Msg.TWRITE, 3, 0, b"guest")
    c.walk(0, 4, b"tmp")
    c.rpc(Msg.TRENAMEAT, 4, b"f", 4, b"g")
    assert (home / ".lkvm" / "default" / "tmp" / "g").read_bytes() == b"guest"
    c.rpc(Msg.TUNLINKAT, 4, b"g", 0)
    assert os.listdir(home / ".lkvm" / "default" / "tmp") == []


def test_host_share_is_read_only(home):
    hostshare = guestroot.choose([], False, True).shares[1]
    c = mount(hostshare)
    c.walk(0, 1, b"etc", b"passwd")
    c.rpc(Msg.TLOPEN, 1, O_RDONLY)
    assert c.read_all(1).startswith(b"root:")
    c.walk(0, 2, b"etc", b"passwd")
    c.walk(0, 3, b"tmp")
    for mtype, *args in ((Msg.TLOPEN, 2, O_WRONLY),
                         (Msg.TLCREATE, 3, b"lkvm-test", O_RDWR | O_CREAT, 0o644, 0),
                         (Msg.TMKDIR, 3, b"lkvm-test", 0o755, 0),
                         (Msg.TUNLINKAT, 3, b"anything", 0),
                         (Msg.TSETATTR, 2, 1, 0o777, 0, 0, 0, 0, 0, 0, 0)):
        with pytest.raises(OSError) as e:
            c.rpc(mtype, *args)
        assert e.value.errno == errno.EROFS, mtype


def test_9p_ro_option_makes_a_read_only_share(tmp_path, lkvm_home):
    """--9p DIR,TAG,ro reaches the device as a read-only share tagged TAG
    (it used to be a writable share tagged "TAG,ro")."""
    (tmp_path / "tree").mkdir()
    cfg = load_builtin("run").configure(["--9p", f"{tmp_path}/tree,data,ro", guest("hello")])
    share = cfg.shares[-1]
    dev = importlib.import_module("virtio.9p").P9(mock_memory(), share.path, share.tag,
                                                 share.readonly)
    try:
        assert bytes(dev.config[2:]) == b"data"
        c = Client(dev.server.handle)
        c.mount()
        with pytest.raises(OSError) as e:
            c.rpc(Msg.TMKDIR, 0, b"new", 0o755, 0)
        assert e.value.errno == errno.EROFS
    finally:
        dev.close()
    assert not (tmp_path / "tree" / "new").exists()
