"""The `l2host` pytest fixture: a runner for commands that need a KVM able to
boot Linux; and `kvmconfig_bzimage`, the kernel those commands boot when
they need lkvm's own config.  Import them into a conftest.py to make them
available.

A test host lives from its first test to its last, not to the session's
end: an L1 costs CPU even idle, and the machine may have two cores for
the tests, other L1s and the people working on it.  order_by_host() puts
each host's tests together, after the tests that need none;
release_hosts() closes a host after its last test.  A later test that
still asks for one (a rerun, a -k selection) boots it again."""

import os
import shutil
from collections.abc import Iterator

import pytest

from .hosts import DEFAULT, HOSTS, HostConfig
from .l2 import kvmconfig_kernel
from .probe import needed
from .runner import L1, Direct

# The session-wide host fixtures, in the order their tests run: arm64's and
# ppc64's few first, then the many of the default host's.
HOST_FIXTURES = ("arm64host", "ppc64host", "l2host", "l2host_backports")

# Each host fixture's runner while it may be booted ...
_open: dict[str, Direct | L1] = {}
# ... and the test after which it is closed.
_last_user: dict[str, str] = {}


def shared_host(name: str, host: Direct | L1) -> Iterator[Direct | L1]:
    """Yield `host` as fixture `name`'s value, closing it at the end in any case."""
    _open[name] = host
    try:
        yield host
    finally:
        _open.pop(name, None)
        host.close()


def _group(item: pytest.Item) -> int:
    """0: needs no test host; then by HOST_FIXTURES; last, e2e tests that
    boot hosts of their own."""
    if item.get_closest_marker("e2e") is None:
        return 0
    used = [i for i, name in enumerate(HOST_FIXTURES, 1) if name in item.fixturenames]
    return used[0] if used else len(HOST_FIXTURES) + 1


def order_by_host(items: list[pytest.Item]) -> None:
    """Each host's tests together (a stable sort: files keep their order)."""
    items.sort(key=_group)


def note_last_users(items: list[pytest.Item]) -> None:
    """Remember each host's last test of those that will run."""
    _last_user.clear()
    for item in items:
        for name in HOST_FIXTURES:
            if name in item.fixturenames:
                _last_user[name] = item.nodeid


def release_hosts(item: pytest.Item) -> None:
    """Close the hosts whose last test `item` was (boots again if asked)."""
    for name in HOST_FIXTURES:
        if _last_user.get(name) == item.nodeid and name in _open:
            _open[name].close()


@pytest.fixture(scope="session")
def l2host() -> Iterator[Direct | L1]:
    """Direct where /dev/kvm runs CPL0 natively, else L1 (booted on first use,
    shared by the whole test session)."""
    if not needed():
        yield Direct()
        return
    spec = HOSTS[DEFAULT]
    if shutil.which(spec.qemu) is None:
        pytest.skip(
            f"this KVM can't boot Linux guests and {spec.qemu} for the L1 test host "
            f"is missing: install {spec.package}"
        )
    # The soak (scripts/testhost.py soak-e2e -c N --qemu SUITE) runs the tier on
    # other L1 CPU counts and QEMUs.
    cpus = int(os.environ.get("LKVM_TESTHOST_CPUS", 0)) or None
    qemu = os.environ.get("LKVM_TESTHOST_QEMU") or None
    yield from shared_host("l2host", L1(HostConfig(cpus=cpus, qemu=qemu)))


@pytest.fixture(scope="session")
def l2host_backports() -> Iterator[Direct | L1]:
    """l2host's like in bookworm-backports' QEMU (10.0), for guests that
    bookworm's QEMU (7.2) cannot run nested: Debian's 6.12 kernels
    double-fault there, under lkvm and QEMU alike (0 of 6 boots), and boot
    in 10.0 (6 of 6).  Direct where /dev/kvm runs CPL0 natively."""
    if not needed():
        yield Direct()
        return
    yield from shared_host("l2host_backports", L1(HostConfig(qemu="backports")))


@pytest.fixture
def kvmconfig_bzimage() -> str:
    """The kernel `make guest-kernel` builds (9p, virtio-net and IP
    autoconfig built in).  Ask for it before l2host, so that a missing
    kernel skips the test without booting L1."""
    found = kvmconfig_kernel()
    if found is None:
        pytest.skip("no kernel from make guest-kernel: run it")
    return str(found)
