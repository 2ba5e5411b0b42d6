"""arm64 guests under lkvm on arm64 KVM (e2e: in the arm64 test host where
this machine is no arm64 one).  First the tiny Image of tests/guests/arm64,
which checks the device tree in x0, writes to the UART and powers off with
PSCI; timed with the host's clock, as the guest's own disagrees there."""

import os
import time

import pytest

from tests.helpers import GUESTS, KVMDIR

pytestmark = pytest.mark.e2e

LKVM = os.path.join(KVMDIR, "lkvm.py")
TINY_TIMEOUT = 120  # python3 starts in about a second in the emulated host


def lkvm_run(host, *args: str, timeout: float = TINY_TIMEOUT):
    """`lkvm run ARGS` with the host's python3 (the launcher's venv is this
    machine's), and how long it took by the host's clock."""
    start = time.monotonic()
    r = host.run(["python3", LKVM, "run", *args], timeout=timeout, cwd=KVMDIR)
    return r, time.monotonic() - start


def test_tiny_arm64_guest(arm64host) -> None:
    hello = os.path.join(GUESTS, "arm64", "hello.bin")
    assert os.path.exists(hello), "run make"
    # Any initrd keeps lkvm from sharing a default 9p root with an Image.
    r, seconds = lkvm_run(arm64host, "-k", hello, "-m", "16", "-c", "1", "-i", hello)
    print(f"arm64 tiny guest: lkvm run to PSCI SYSTEM_OFF in {seconds:.2f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hello from arm64, a device tree in x0" in r.stdout, r.stdout + r.stderr
