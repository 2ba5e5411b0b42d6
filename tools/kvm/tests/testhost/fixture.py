"""The `l2host` pytest fixture: a runner for commands that need a KVM able to
boot Linux. Import it into a conftest.py to make it available."""

import shutil
from collections.abc import Iterator

import pytest

from .hosts import DEFAULT, HOSTS
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
