"""lkvm setup builds the rootfs kvmtool users know, and refuses bad names."""

import os

import pytest

from kvm.errors import KVMTOOL_DIE
from tests.helpers import run_lkvm


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_setup_makes_the_rootfs(home):
    r = run_lkvm("setup", "box")
    assert r.returncode == 0, r.stderr
    assert b"lkvm run -d box" in r.stdout
    root = home / ".lkvm" / "box"
    for d in ("dev", "etc", "host", "proc", "sys", "tmp", "var/lib", "virt/home"):
        assert (root / d).is_dir(), d
    for link in ("bin", "lib", "lib64", "sbin", "usr", "etc/ld.so.conf"):
        assert os.readlink(root / link) == f"/host/{link}"
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    init = root / "virt" / "init"
    assert os.access(init, os.X_OK) and init.read_bytes()[:4] == b"\x7fELF"
    assert (home / ".lkvm").stat().st_mode & 0o777 == 0o700


def test_setup_refuses_an_existing_name(home):
    assert run_lkvm("setup", "box").returncode == 0
    r = run_lkvm("setup", "box")
    assert r.returncode == KVMTOOL_DIE
    expected = f"Fatal: a rootfs named box already exists in {home}/.lkvm/box"
    assert r.stderr.decode().strip() == expected


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_setup_refuses_names_that_are_paths(home, name):
    r = run_lkvm("setup", name)
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    assert not (home / "escape").exists()
