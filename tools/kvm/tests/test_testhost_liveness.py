"""How the test host tells a dead L1 from a slow job, and what the runner
does then, without booting anything (test_testhost.py freezes a real L1)."""

import json
import os
import socket
from pathlib import Path

import pytest

from tests.testhost import liveness, runner
from tests.testhost.liveness import Liveness
from tests.testhost.session import L1Died, Result, Session

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


def test_a_lost_heartbeat_reports_what_the_last_beat_said(
    tmp_path: Path, clock: list[float]
) -> None:
    live = Liveness(tmp_path / "console.log", lost_after=40)
    live.beat("MemAvailable=81234k tmpfs=3012k")
    clock[0] += 41
    assert live.why_dead() == ("no heartbeat from L1 for 40 s "
                               "(its last beat: MemAvailable=81234k tmpfs=3012k)")


def test_beats_queued_between_jobs_keep_l1_alive(tmp_path: Path, clock: list[float]) -> None:
    """Nobody reads L1's beats between two jobs (the shared L1 idles while
    other tests run): the next job reads those queued before judging."""
    session = Session.__new__(Session)  # the control channel alone, no qemu
    ours, theirs = socket.socketpair()
    never, unused = os.pipe()  # stands for qemu's pidfd, which stays quiet
    session._conn, session._buf, session._pidfd, session._proc = ours, b"", never, None
    session._console = tmp_path / "console.log"
    session._liveness = Liveness(session._console, lost_after=40)
    try:
        session._liveness.beat()
        clock[0] += 300  # five minutes of other tests
        theirs.sendall(b"HB\n" * 150 + b"DONE 1 0\n")
        assert session._readline(clock[0] + 60, "job 1") == "DONE 1 0"
    finally:
        for fd in (never, unused):
            os.close(fd)
        ours.close()
        theirs.close()


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


class FakeSession:
    """Dies under the first job it is given, as many L1s as `deaths` say."""

    deaths = 0
    booted = 0

    def __init__(self, config: object) -> None:
        FakeSession.booted += 1
        self.closed = False

    def run(self, cmd: list[str], timeout: float, env: object, cwd: object) -> Result:
        if FakeSession.deaths:
            FakeSession.deaths -= 1
            self.closed = True
            raise L1Died("no heartbeat from L1 for 40 s\n--- L1 console (tail) ---")
        return Result(0, "ok\n", "")


@pytest.fixture
def fake_l1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(runner, "Session", FakeSession)
    monkeypatch.setattr(runner, "RERUNS", [])
    log = tmp_path / "testhost.log"
    monkeypatch.setenv("LKVM_TESTHOST_LOG", str(log))
    FakeSession.booted = 0
    return log


def test_a_job_l1_died_under_runs_once_more_and_says_so(
    fake_l1: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_x.py::test_y (call)")
    FakeSession.deaths = 1
    assert runner.L1().run(["true"], timeout=10).stdout == "ok\n"
    assert FakeSession.booted == 2
    assert runner.RERUNS == ["tests/test_x.py::test_y: no heartbeat from L1 for 40 s"]
    assert "L1 died (no heartbeat from L1 for 40 s)" in capsys.readouterr().err
    logged = json.loads(fake_l1.read_text())
    assert logged["event"] == "l1-died"
    assert logged["job"] == "tests/test_x.py::test_y"
    assert logged["why"].endswith("--- L1 console (tail) ---")


def test_a_second_death_fails_the_job(fake_l1: Path) -> None:
    FakeSession.deaths = 2
    with pytest.raises(L1Died):
        runner.L1().run(["true"], timeout=10)
    assert FakeSession.booted == 2
