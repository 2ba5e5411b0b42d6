"""The e2e test host works: commands run with their real status and output,
and /dev/kvm there boots a Linux guest (QEMU as the L2 VMM for now)."""

import os
import signal
import subprocess
import threading
import time

import pytest

from tests.testhost import L1Died, L1Error, Session, guest_kernel, make_initrd, needed

pytestmark = pytest.mark.e2e

MARKER = "testhost-smoke-ok"


def test_commands_keep_cwd_status_and_streams(l2host) -> None:
    r = l2host.run(["sh", "-c", "pwd; echo to-stderr >&2; exit 7"], timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (7, os.getcwd() + "\n", "to-stderr\n")


def test_kvm_boots_l2_linux(l2host) -> None:
    r = l2host.run(["test", "-c", "/dev/kvm"], timeout=120)
    assert r.returncode == 0, "no /dev/kvm on the test host"
    script = f'echo "{MARKER} cpus=$(grep -c ^processor /proc/cpuinfo)"\n'
    qemu = [
        "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
        "-smp", "2", "-nodefaults", "-no-reboot", "-display", "none",
        "-serial", "stdio", "-kernel", str(guest_kernel()),
        "-initrd", str(make_initrd(script)),
        "-append", "console=ttyS0 panic=-1 quiet",
    ]  # fmt: skip
    start = time.monotonic()
    r = l2host.run(qemu, timeout=180)  # took 48 s on a loaded machine
    print(f"L2 boot via QEMU: {time.monotonic() - start:.1f} s")
    assert r.returncode == 0, r.stderr
    assert f"{MARKER} cpus=2" in r.stdout
    assert "testhost-l2: exit 0" in r.stdout


def test_l1_timeout_reports_and_cleans_up() -> None:
    if not needed():
        pytest.skip("this host runs e2e tests directly, without L1")
    session = Session()
    tmp = session._tmp
    cmd = ["sh", "-c", "echo started; sleep 1000"]
    # Long enough for the job to have printed under any load; it never ends.
    with pytest.raises(L1Error, match=r"(?s)timeout 30 s.*--- stdout ---\nstarted"):
        session.run(cmd, timeout=30)
    assert session.closed
    assert not tmp.exists()
    qemus = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, check=False)
    assert qemus.stdout == b""


def test_l1_that_stops_beating_fails_the_job_at_once() -> None:
    """A frozen L1 (its qemu stopped, as a hung host looks from outside) fails
    the job when the heartbeat is missed, long before the job's own limit."""
    if not needed():
        pytest.skip("this host runs e2e tests directly, without L1")
    lost_after = 10.0
    session = Session(heartbeat_lost=lost_after)
    started = threading.Event()
    cmd = ["sh", "-c", "echo started; sleep 1000"]

    def freeze() -> None:
        started.wait()
        os.kill(session._proc.pid, signal.SIGSTOP)

    threading.Thread(target=freeze, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(L1Died, match=f"no heartbeat from L1 for {lost_after:.0f} s"):
        started.set()
        session.run(cmd, timeout=600)
    took = time.monotonic() - start
    print(f"frozen L1 detected after {took:.1f} s")
    assert took < lost_after + 20
    assert session.closed
