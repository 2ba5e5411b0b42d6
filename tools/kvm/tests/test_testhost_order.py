"""The shared test hosts live from their first test to their last: each
host's tests run together, after the tests that need none, and a host is
closed once its last test is done (testhost/fixture.py), without booting
anything."""

from dataclasses import dataclass, field

import pytest

from tests.testhost import fixture


@dataclass
class Item:
    """What the ordering reads of a pytest item."""

    nodeid: str
    fixturenames: list[str] = field(default_factory=list)
    marks: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.marks else None


def e2e(nodeid: str, *fixtures: str) -> Item:
    return Item(nodeid, list(fixtures), {"e2e"})


class Host:
    """A runner that counts its closes."""

    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


@pytest.fixture(autouse=True)
def no_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """This run's own hosts, if any, are not the ones these tests close."""
    monkeypatch.setattr(fixture, "_open", {})
    monkeypatch.setattr(fixture, "_last_user", {})


def test_each_hosts_tests_run_together_after_those_that_need_none() -> None:
    items = [
        e2e("test_arm64_boot.py::a", "arm64host"),
        Item("test_cli.py::a"),
        e2e("test_gdb_e2e.py::a", "kvmconfig_bzimage", "l2host"),
        Item("test_hw.py::a"),
        e2e("test_testhost.py::own_l1"),
        e2e("test_testhost.py::a", "l2host"),
        e2e("test_testhost_arm64.py::a", "arm64host"),
        e2e("test_vsock_e2e.py::a", "l2host"),
    ]
    fixture.order_by_host(items)
    assert [i.nodeid for i in items] == [
        "test_cli.py::a", "test_hw.py::a",
        "test_arm64_boot.py::a", "test_testhost_arm64.py::a",
        "test_gdb_e2e.py::a", "test_testhost.py::a", "test_vsock_e2e.py::a",
        "test_testhost.py::own_l1",
    ]  # fmt: skip


def test_a_host_is_closed_after_its_last_test_and_once_more_at_the_end() -> None:
    items = [e2e("a.py::one", "l2host"), e2e("a.py::two", "l2host"), e2e("a.py::three")]
    host = Host()
    value = fixture.shared_host("l2host", host)
    assert next(value) is host
    fixture.note_last_users(items)
    fixture.release_hosts(items[0])
    assert host.closes == 0
    fixture.release_hosts(items[1])
    assert host.closes == 1
    fixture.release_hosts(items[2])
    assert host.closes == 1
    value.close()               # the fixture's own teardown: closing again is harmless
    assert host.closes == 2
    fixture.release_hosts(items[1])     # gone from the open hosts
    assert host.closes == 2


def test_a_host_never_booted_is_not_closed() -> None:
    items = [e2e("a.py::one", "arm64host")]
    fixture.note_last_users(items)
    fixture.release_hosts(items[0])     # no arm64host fixture made: nothing to do
    assert fixture._open == {}
