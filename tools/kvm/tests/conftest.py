"""Shared pytest fixtures.  tools/kvm is on sys.path (pytest puts the
first directory above the tests package there), so tests import lkvm's
packages by their names."""

import os

import pytest

from tests.testhost.fixture import l2host

__all__ = ["l2host"]


@pytest.fixture
def kvm_available() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
