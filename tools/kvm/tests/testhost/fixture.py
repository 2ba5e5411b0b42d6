"""The `l2host` pytest fixture: a runner for commands that need a KVM able to
boot Linux; and `kvmconfig_bzimage`, the kernel those commands boot when
they need lkvm's own config.  Import them into a conftest.py to make them
available."""

import shutil
from collections.abc import Iterator

import pytest

from .hosts import DEFAULT, HOSTS
from .l2 import kvmconfig_kernel
from .probe import needed
from .runner import L1, Direct


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
    host = L1()
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def kvmconfig_bzimage() -> str:
    """The kernel `make guest-kernel` builds (9p, virtio-net and IP
    autoconfig built in).  Ask for it before l2host, so that a missing
    kernel skips the test without booting L1."""
    found = kvmconfig_kernel()
    if found is None:
        pytest.skip("no kernel from make guest-kernel: run it")
    return str(found)
