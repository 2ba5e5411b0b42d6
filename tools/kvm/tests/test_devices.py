"""The device registry: init by level, exit in reverse, every exit run;
and a virtio setup that fails part way closes what it made."""

import os

import pytest

from kvm.config import Config
from kvm.devices import Hooks, Level, Registry
from kvm.errors import LkvmError
from tests.fakevm import FakeRouting, FakeVm
from virtio import setup


def recorder(log: list[str], name: str, fail: str = "") -> Hooks:
    def step(what: str) -> None:
        log.append(f"{what} {name}")
        if what == fail:
            raise OSError(f"{name} cannot {what}")
    return Hooks(name, lambda: step("exit"), lambda: step("init"))


def test_levels_init_in_order_and_exit_in_reverse():
    log: list[str] = []
    reg = Registry()
    for level, name in ((Level.LATE, "ipc"), (Level.CORE, "kvm"), (Level.VIRTIO, "rng"),
                        (Level.CORE, "vm"), (Level.VIRTIO, "9p"), (Level.LATE, "term")):
        reg.add(level, recorder(log, name))
    reg.init()
    reg.exit()
    assert log == ["init kvm", "init vm", "init rng", "init 9p", "init ipc", "init term",
                   "exit term", "exit ipc", "exit 9p", "exit rng", "exit vm", "exit kvm"]


def test_a_failing_exit_does_not_leak_the_others(capsys):
    log: list[str] = []
    reg = Registry()
    reg.add(Level.CORE, recorder(log, "vm"))
    reg.add(Level.VIRTIO, recorder(log, "blk", fail="exit"))
    reg.add(Level.LATE, recorder(log, "ipc"))
    reg.exit()
    assert log == ["exit ipc", "exit blk", "exit vm"]
    assert capsys.readouterr().err == "  Warning: blk: exit failed: blk cannot exit\n"


def test_a_failing_init_leaves_every_exit_to_run():
    """A setup that fails part way tears down all that was made."""
    log: list[str] = []
    reg = Registry()
    reg.add(Level.CORE, recorder(log, "vm"))
    reg.add(Level.VIRTIO, recorder(log, "9p", fail="init"))
    reg.add(Level.LATE, recorder(log, "ipc"))
    with pytest.raises(OSError):
        reg.init()
    reg.exit()
    assert log == ["init vm", "init 9p", "exit ipc", "exit 9p", "exit vm"]


def test_a_failed_virtio_setup_closes_what_it_made(monkeypatch):
    """The rng is made, then the disk fails: its file, its I/O thread's
    epoll and eventfd, are closed before the error goes up."""
    monkeypatch.setattr(setup, "IrqRouting", lambda vm: FakeRouting())
    cfg = Config(name="t", cpus=1, ram_mib=64, rng=True, disks=("/dev/null",))
    vm = FakeVm()
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(LkvmError):
        setup.attach(vm, cfg, print)
    vm.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_bad_later_disk_closes_the_earlier_ones(monkeypatch, tmp_path):
    """-d good.img -d /dev/null: the first image, opened and locked before
    the second is refused, is closed again, its lock with it."""
    monkeypatch.setattr(setup, "IrqRouting", lambda vm: FakeRouting())
    image = tmp_path / "good.img"
    image.write_bytes(bytes(64 * 1024))
    cfg = Config(name="t", cpus=1, ram_mib=64, disks=(str(image), "/dev/null"))
    vm = FakeVm()
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(LkvmError, match="/dev/null"):
        setup.attach(vm, cfg, print)
    vm.close()
    assert sorted(os.listdir("/proc/self/fd")) == before
