"""list, pause, resume, stop and debug against tiny guests on the local
/dev/kvm, as a user runs them; many guests at once; the ways a guest's
socket goes away."""

import json
import os
import re
import select
import signal
import subprocess
import time
from contextlib import ExitStack, contextmanager

import pytest

from ipc.client import connect
from tests.helpers import LKVM, TINY_TIMEOUT, guest, run_lkvm
from util.home import lkvm_dir

pytestmark = pytest.mark.usefixtures("kvm_available", "lkvm_home")


def read_until(stream, marker: bytes, timeout: float = TINY_TIMEOUT) -> bytes:
    """Read a pipe until `marker` shows up; fail after `timeout`."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], \
            f"no {marker!r} within {timeout} s; got {data!r}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"EOF before {marker!r}; got {data!r}"
        data += chunk
    return data


@contextmanager
def running(name: str, image: str = "idle", cpus: int = 1, opts: tuple[str, ...] = ()):
    """`lkvm run --name NAME` in the background; yields once its socket is
    up (it says so on stderr right after), ends it if the test did not."""
    p = subprocess.Popen([LKVM, "run", "-c", str(cpus), "-m", "16", "--name", name, *opts,
                          guest(image)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(p.stderr, b"# lkvm run")
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(TINY_TIMEOUT)
        p.stdout.close()
        p.stderr.close()


def ok(*args: str) -> str:
    r = run_lkvm(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def counters(name: str) -> list[int]:
    """Every vCPU's %ebx, read from a debug dump."""
    return [int(v, 16) for v in re.findall(r" rbx: ([0-9a-f]{16})", ok("debug", "-n", name,
                                                                     "--dump"))]


def sockets() -> list[str]:
    return [n for n in os.listdir(lkvm_dir()) if n.endswith(".sock")]


def fatal(r) -> str:
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    return r.stderr.decode().strip()


def test_pause_stops_progress_and_resume_restarts_it():
    with running("ctr", "counter", cpus=2) as p:
        assert json.loads(ok("list", "--json")) == [
            {"pid": p.pid, "name": "ctr", "state": "running"}]
        a, b = counters("ctr"), counters("ctr")
        assert all(y > x for x, y in zip(a, b, strict=True)), (a, b)
        assert ok("pause", "-n", "ctr") == "Guest ctr paused\n"
        assert ok("list").splitlines()[2].split() == [str(p.pid), "ctr", "paused"]
        a, b = counters("ctr"), counters("ctr")
        assert a == b and len(a) == 2  # no vCPU moved while paused
        assert ok("resume", "-n", "ctr") == "Guest ctr resumed\n"
        c = counters("ctr")
        assert all(y > x for x, y in zip(b, c, strict=True)), (b, c)
        assert ok("stop", "-n", "ctr") == ""
        assert p.wait(TINY_TIMEOUT) == 0
        assert sockets() == []


def test_debug_dump_nmi_and_sysrq():
    with running("dbg", "counter", cpus=2) as p:
        dump = ok("debug", "-n", "dbg", "-d")
        assert "# vCPU #0's dump:" in dump and "# vCPU #1's dump:" in dump
        assert "Segment registers:" in dump and "Code:" in dump
        assert "rip linear 0x1001" in dump and "(paging off)" in dump
        ok("debug", "-n", "dbg", "--nmi", "1")
        read_until(p.stdout, b"NMI\n")
        assert "no vCPU 2" in fatal(run_lkvm("debug", "-n", "dbg", "--nmi", "2"))
        ok("stop", "-n", "dbg")
        assert p.wait(TINY_TIMEOUT) == 0
    with running("echo", "echo") as p:
        # The echo guest writes back what ttyS0 receives and resets at a
        # newline: a break reads as NUL, then the key.
        ok("debug", "-n", "echo", "--sysrq", "\n")
        assert p.wait(TINY_TIMEOUT) == 0
        assert p.stdout.read() == b"\0\n"


def test_balloon_on_a_guest_without_its_driver():
    """The device is there but nothing drives it: the target still moves,
    statistics time out with one line, and a guest without --balloon
    says so."""
    with running("bal", opts=("--balloon",)) as p, running("plain"):
        assert ok("balloon", "-n", "bal", "--inflate", "8") == ""
        assert ok("balloon", "-n", "bal", "--deflate", "64") == ""  # clamped at 0
        start = time.monotonic()
        r = run_lkvm("stat", "-n", "bal", "--memory")
        assert fatal(r).splitlines() == ["Fatal: guest 'bal' sent no memory statistics "
                                         "within 1 s: is its balloon driver loaded?"]
        assert time.monotonic() - start < TINY_TIMEOUT / 2
        r = run_lkvm("balloon", "-n", "plain", "--inflate", "8")
        assert fatal(r).splitlines() == ["Fatal: guest 'plain' has no balloon device"]
        ok("stop", "-n", "bal")
        assert p.wait(TINY_TIMEOUT) == 0


def test_garbage_on_a_live_guest_leaves_it_alone():
    import socket
    with running("g", "counter") as p:
        before = counters("g")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TINY_TIMEOUT)
            s.connect(os.path.join(lkvm_dir(), "g.sock"))
            s.sendall(os.urandom(16) + b"\xff" * 8)
            while s.recv(4096):
                pass  # the server hangs up on us
        assert counters("g")[0] > before[0]
        ok("stop", "-n", "g")
        assert p.wait(TINY_TIMEOUT) == 0


def test_name_in_use_and_stale_sockets():
    with running("dup") as p:
        r = run_lkvm("run", "-c", "1", "-m", "16", "--name", "dup", guest("idle"))
        assert "the guest name 'dup' is in use" in fatal(r)
        assert sockets() == ["dup.sock"] and p.poll() is None
        p.send_signal(signal.SIGKILL)  # no chance to clean up
        p.wait(TINY_TIMEOUT)
    assert sockets() == ["dup.sock"]
    assert "no running guest named 'dup'" in fatal(run_lkvm("pause", "-n", "dup"))
    assert sockets() == []
    with running("dup") as p:  # a dead guest's name is free again
        ok("stop", "-a")
        assert p.wait(TINY_TIMEOUT) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_remove_the_socket(sig):
    with running("sig") as p:
        p.send_signal(sig)
        assert p.wait(TINY_TIMEOUT) == 128 + sig
    assert sockets() == []


def test_a_crashing_guest_removes_its_socket():
    r = run_lkvm("run", "-c", "1", "-m", "16", "--name", "crash", guest("triple"))
    assert r.returncode == 1
    assert sockets() == []


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_sixteen_guests_in_parallel():
    before = fds()
    names = [f"g{i:02}" for i in range(16)]
    with ExitStack() as stack:
        guests = [stack.enter_context(running(n)) for n in names]
        rows = json.loads(ok("list", "--json"))
        assert [(r["name"], r["state"]) for r in rows] == [(n, "running") for n in names]
        assert sorted(r["pid"] for r in rows) == sorted(p.pid for p in guests)
        # A guest's server keeps no fd of the connections it served.
        with connect("g00") as g:
            g.pid()
            first = fds(guests[0].pid)
            for _ in range(3):
                ok("list")
                ok("pause", "-a")
                ok("resume", "-a")
            g.pid()
            g.pid()  # every earlier hang-up is handled before this answer
            assert fds(guests[0].pid) == first
        ok("stop", "-a")
        assert [p.wait(TINY_TIMEOUT) for p in guests] == [0] * 16
    assert sockets() == []
    assert fds() == before
