"""How the test host tells a dead L1 from a slow job, without booting
anything (test_testhost.py freezes a real one)."""

from pathlib import Path

import pytest

from tests.testhost import liveness
from tests.testhost.liveness import Liveness

SOFT_LOCKUP = (b"[  412.337005] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! "
               b"[lkvm-ioevent:1234]\n")
RCU_STALL = b"[  98.1] rcu: INFO: rcu_preempt self-detected stall on CPU\n"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: now[0])
    return now


def test_alive_until_the_heartbeat_stops(tmp_path: Path, clock: list[float]) -> None:
    live = Liveness(tmp_path / "console.log", lost_after=40)
    clock[0] += 1000  # no beat yet: L1 is booting, bounded by its boot timeout
    assert live.why_dead() is None
    live.beat()
    clock[0] += 39
    assert live.why_dead() is None
    live.beat()
    clock[0] += 41
    assert live.why_dead() == "no heartbeat from L1 for 40 s"


@pytest.mark.parametrize("report", [SOFT_LOCKUP, RCU_STALL])
def test_a_watchdog_report_on_the_console_is_death(tmp_path: Path, report: bytes) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"[    1.0] Run /init as init process\n")
    live = Liveness(console)
    assert live.why_dead() is None
    with open(console, "ab") as f:
        f.write(report[:30])  # half a line: not read yet
        f.flush()
        assert live.why_dead() is None
        f.write(report[30:])
    assert live.why_dead() == "L1's kernel reports a stuck CPU"


def test_ordinary_console_lines_are_not_death(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"watchdog: initialized\nrcu: Hierarchical RCU implementation.\n")
    assert Liveness(console).why_dead() is None
