"""A bug of lkvm's own in a vCPU or I/O thread ends the VM with one error
line, as kvmtool tells every error; the Python traceback is printed only
under --loglevel debug, for whoever debugs lkvm."""

import os

import pytest

from kvm import msg
from kvm.config import Config
from kvm.iothread import IoThread
from tests.fakevm import kvm_vm

CONFIG = Config(name="bug", cpus=1, ram_mib=16)


class DeviceBug(Exception):
    pass


def broken() -> None:
    raise DeviceBug("a device model's bug")


@pytest.fixture(params=["info", "debug"])
def level(request):
    msg.set_level(request.param)
    yield request.param
    msg.set_level(msg.DEFAULT_LEVEL)


def traced(err: str, level: str) -> None:
    """The traceback only when asked for."""
    assert ("Traceback" in err) == (level == "debug"), err


def test_a_vcpu_threads_bug(kvm_available, level, capsys):
    with kvm_vm(CONFIG) as vm:
        vcpu = vm.vcpus[0]
        vcpu._loop = broken
        vcpu._thread()
        assert vm.stopping and vm.exit_status == 1
    err = capsys.readouterr().err
    traced(err, level)
    assert "  Error: vCPU 0: a device model's bug" in err


def test_an_io_threads_bug(level, capsys):
    errors: list[str] = []
    t = IoThread("bug", errors.append)
    fd = os.eventfd(1, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        t.add(fd, broken)
        t.start()
        assert t.join(10)           # the loop ends on the bug
    finally:
        os.close(fd)
    assert errors == ["I/O thread bug: a device model's bug"]
    traced(capsys.readouterr().err, level)
