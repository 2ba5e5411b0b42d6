"""A booted rootfs belongs to the guest: lkvm's own writes and reads in it
must not follow what the guest left there out onto the host."""

import os
import stat

import pytest

from kvm import rootfs
from kvm.errors import LkvmError


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = rootfs.prepare("box")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"host file\n")
    return path, outside


def test_prepare_makes_a_bootable_tree(root):
    path, _ = root
    assert stat.S_IMODE(os.stat(os.path.join(path, "tmp")).st_mode) == 0o1777
    init = os.path.join(path, "virt", "init")
    assert os.stat(init).st_mode & 0o777 == 0o755
    assert rootfs.prepare("box") == path      # a second run reuses it


def test_put_replaces_a_planted_symlink_instead_of_writing_through(root):
    path, outside = root
    link = os.path.join(path, "virt", "sandbox.sh")
    os.symlink(outside / "victim", link)
    rootfs.put(path, "virt/sandbox.sh", b"#!/bin/sh\n", 0o755)
    assert (outside / "victim").read_bytes() == b"host file\n"
    assert not os.path.islink(link) and open(link, "rb").read() == b"#!/bin/sh\n"
    assert sorted(os.listdir(os.path.join(path, "virt"))) == ["home", "init", "sandbox.sh"]


def test_put_refuses_a_directory_swapped_for_a_symlink(root):
    path, outside = root
    os.rename(os.path.join(path, "virt"), os.path.join(path, "old-virt"))
    os.symlink(outside, os.path.join(path, "virt"))
    with pytest.raises(LkvmError, match="virt"):
        rootfs.put(path, "virt/victim", b"clobbered", 0o644)
    with pytest.raises(LkvmError):
        rootfs.install_init(path)
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
    assert rootfs.get(path, "virt/.status", 16) is None


def test_get_and_remove(root):
    path, _ = root
    rootfs.put(path, "virt/.status", b"7\n", 0o644)
    assert rootfs.get(path, "virt/.status", 1) == b"7"
    rootfs.remove(path, "virt/.status")
    rootfs.remove(path, "virt/.status")       # gone already: fine
    assert rootfs.get(path, "virt/.status", 16) is None
