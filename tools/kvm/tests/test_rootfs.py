"""A booted rootfs belongs to the guest: lkvm's own writes and reads in it
must not follow what the guest left there out onto the host."""

import os
import stat

import pytest

from kvm.errors import LkvmError
from rootfs import tree


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tree.prepare("box")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"host file\n")
    return path, outside


def test_prepare_makes_a_bootable_tree(root):
    path, _ = root
    assert stat.S_IMODE(os.stat(os.path.join(path, "tmp")).st_mode) == 0o1777
    init = os.path.join(path, "virt", "init")
    assert os.stat(init).st_mode & 0o777 == 0o755
    assert tree.prepare("box") == path      # a second run reuses it


def test_put_replaces_a_planted_symlink_instead_of_writing_through(root):
    path, outside = root
    link = os.path.join(path, "virt", "sandbox.sh")
    os.symlink(outside / "victim", link)
    tree.put(path, "virt/sandbox.sh", b"#!/bin/sh\n", 0o755)
    assert (outside / "victim").read_bytes() == b"host file\n"
    assert not os.path.islink(link) and open(link, "rb").read() == b"#!/bin/sh\n"
    assert sorted(os.listdir(os.path.join(path, "virt"))) == ["home", "init", "sandbox.sh"]


def test_put_refuses_a_directory_swapped_for_a_symlink(root):
    path, outside = root
    os.rename(os.path.join(path, "virt"), os.path.join(path, "old-virt"))
    os.symlink(outside, os.path.join(path, "virt"))
    with pytest.raises(LkvmError, match="virt"):
        tree.put(path, "virt/victim", b"clobbered", 0o644)
    with pytest.raises(LkvmError):
        tree.install_init(path)
    assert (outside / "victim").read_bytes() == b"host file\n"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "missing", "dir"])
def test_get_reads_only_regular_files(root, kind):
    path, outside = root
    target = os.path.join(path, "virt", ".status")
    make = {"symlink": lambda: os.symlink(outside / "victim", target),
            "fifo": lambda: os.mkfifo(target),   # would block a plain open()
            "missing": lambda: None,
            "dir": lambda: os.mkdir(target)}
    make[kind]()
    assert tree.get(path, "virt/.status", 16) is None


def test_get_and_remove(root):
    path, _ = root
    tree.put(path, "virt/.status", b"7\n", 0o644)
    assert tree.get(path, "virt/.status", 1) == b"7"
    tree.remove(path, "virt/.status")
    tree.remove(path, "virt/.status")       # gone already: fine
    assert tree.get(path, "virt/.status", 16) is None


def test_planted_temporary_names_cannot_block_the_rootfs(root):
    """A guest owns virt/: it may pre-create whatever names lkvm would
    write beside init.  The ones a pid makes must not stop the next run."""
    path, _ = root
    virt = os.path.join(path, "virt")
    planted = {f".init.lkvm-{os.getpid()}", f".init.lkvm-{os.getpid() + 1}"}
    for name in planted:
        os.mkfifo(os.path.join(virt, name))
    tree.prepare("box")
    assert set(os.listdir(virt)) == {"home", "init", *planted}   # nothing of ours left


def test_put_retries_a_taken_random_name_and_gives_up_in_one_line(root, monkeypatch):
    path, _ = root
    virt = os.path.join(path, "virt")
    names = iter(["aa", "aa", "bb"])
    monkeypatch.setattr(tree, "random_hex", lambda: next(names))
    tree.put(path, "virt/x", b"1", 0o644)                 # aa is free
    os.rename(os.path.join(virt, "x"), os.path.join(virt, ".x.lkvm-aa"))
    tree.put(path, "virt/x", b"2", 0o644)                 # aa taken, bb free
    assert open(os.path.join(virt, "x"), "rb").read() == b"2"
    monkeypatch.setattr(tree, "random_hex", lambda: "aa")
    with pytest.raises(LkvmError, match="cannot write .*virt/x: "):
        tree.put(path, "virt/x", b"3", 0o644)
    assert open(os.path.join(virt, ".x.lkvm-aa"), "rb").read() == b"1"   # not ours to remove
