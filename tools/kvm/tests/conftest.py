"""Shared pytest setup for lkvm's tests."""

import pytest

from tests.testhost.fixture import l2host

__all__ = ["l2host"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: boots a real Linux guest (through the L1 test host if needed)"
    )
