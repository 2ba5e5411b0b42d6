"""lkvm run's options become one run configuration, built once and only
read after that: the devices, the VM and the kernel loader all take it."""

import dataclasses

import pytest

from cli.cmd import load_builtin
from tests.helpers import guest
from x86.arch import X86Config

run = load_builtin("run")


def test_configure_builds_one_read_only_config(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cfg = run.configure(["-k", guest("hello"), "-m", "32", "-c", "2", "--rng", "--balloon",
                         "--console", "virtio", "-d", str(tmp_path), "--9p", f"{share},s",
                         "--virtio-transport", "mmio", "--boot-mode", "64", "--no-acpi",
                         "-p", "quiet"], "extra=1")
    assert (cfg.cpus, cfg.ram_mib, cfg.ram_size) == (2, 32, 32 << 20)
    assert (cfg.console, cfg.rng, cfg.balloon, cfg.transport) == ("virtio", True, True, "mmio")
    assert cfg.params == "quiet extra=1"
    # The root's share (the -d directory) comes before --9p's.
    assert [(s.path, s.tag) for s in cfg.shares] == [(str(tmp_path), "/dev/root"),
                                                     (str(share), "s")]
    assert cfg.disks == ()
    assert cfg.arch == X86Config(boot_mode="64", acpi=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rng = False


def test_disks_keep_their_order(tmp_path):
    disks = [str(tmp_path / f"d{i}") for i in range(3)]
    for d in disks:
        open(d, "wb").close()
    cfg = run.configure(["-k", guest("hello"), "-m", "16", "-c", "1",
                         *(a for d in disks for a in ("-d", d + ",ro"))])
    assert cfg.disks == tuple(d + ",ro" for d in disks) and cfg.shares == ()
