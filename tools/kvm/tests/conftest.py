"""Shared pytest fixtures.  tools/kvm is on sys.path (pytest puts the
first directory above the tests package there), so tests import lkvm's
packages by their names."""

import os
import shutil
import tempfile

import pytest

from tests.fakevhost import FakeVhostKernel
from tests.helpers import FUZZ_COUNTS
from tests.p9share import Share
from tests.testhost.fixture import (
    kvmconfig_bzimage,
    l2host,
    l2host_backports,
    note_last_users,
    order_by_host,
    release_hosts,
    shared_host,
)
from tests.testhost.hosts import HOSTS
from tests.testhost.runner import RERUNS, arm64_host, ppc64_host

__all__ = ["kvmconfig_bzimage", "l2host", "l2host_backports"]


@pytest.fixture
def kvm_available() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")


@pytest.fixture
def vhost_kernel(monkeypatch: pytest.MonkeyPatch) -> FakeVhostKernel:
    """A fake vhost kernel in place of virtio/vhost.py's ioctl."""
    from virtio import vhost
    kernel = FakeVhostKernel()
    monkeypatch.setattr(vhost, "ioctl", kernel)
    return kernel


@pytest.fixture
def lkvm_home(monkeypatch: pytest.MonkeyPatch) -> str:
    """A private HOME (so ~/.lkvm is the test's own) with a short path:
    unix socket paths must fit in 108 bytes."""
    home = tempfile.mkdtemp(prefix="lkvm-")
    monkeypatch.setenv("HOME", home)
    yield home
    shutil.rmtree(home)


@pytest.fixture(scope="session")
def arm64host():
    """This machine where it is an arm64 one with KVM, else the arm64 L1,
    one boot for every test that runs there (each boot is seconds of TCG)."""
    host = arm64_host()
    spec = HOSTS["arm64"]
    if host.in_l1 and shutil.which(spec.qemu) is None:
        pytest.skip(f"no {spec.qemu} for the arm64 test host: install {spec.package}")
    yield from shared_host("arm64host", host)


@pytest.fixture(scope="session")
def ppc64host():
    """This machine where it is a ppc64le one with KVM, else the ppc64 L1
    (nested KVM-HV under QEMU's TCG), one boot for every test run there."""
    host = ppc64_host()
    spec = HOSTS["ppc64el"]
    if host.in_l1 and shutil.which(spec.qemu) is None:
        pytest.skip(f"no {spec.qemu} for the ppc64 test host: install {spec.package}")
    yield from shared_host("ppc64host", host)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the slow tier (kernel-tree comparisons, long fuzzing)")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """How many cases each fuzz target ran (the figure a fuzzing claim
    needs), and the jobs that ran twice because the nested test host died
    under them (never passed over in silence)."""
    counts = config.stash.get(FUZZ_COUNTS, {})
    if counts:
        terminalreporter.section("fuzz cases run")
        for target, cases in sorted(counts.items()):
            terminalreporter.write_line(f"{cases:>9,}  {target}")
    if RERUNS:
        terminalreporter.section("test host reruns")
        for line in RERUNS:
            terminalreporter.write_line(f"L1 died, rerun once: {line}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order_by_host(items)
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    note_last_users(session.items)      # those left after -k and -m


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    release_hosts(item)


@pytest.fixture
def share(tmp_path) -> Share:
    """A 9p share with a sentinel beside it, checked untouched afterwards."""
    s = Share(tmp_path)
    yield s
    s.check()
    s.close()


@pytest.fixture
def c(share: Share) -> object:
    """A 9P2000.L client attached to `share`."""
    return share.client()
