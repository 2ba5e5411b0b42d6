"""arm64 guests under lkvm on arm64 KVM (e2e: in the arm64 test host where
this machine is no arm64 one).  First the tiny Image of tests/guests/arm64,
which checks the device tree in x0, writes to the UART and powers off with
PSCI; timed with the host's clock, as the guest's own disagrees there."""

import os
import time

import pytest

from tests.helpers import GUESTS, KVMDIR
from tests.testhost import arm64_guest_kernel, make_initrd

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


# What the Linux guest's init prints: the marker, and what lkvm told it.
LINUX_SCRIPT = r"""
echo "MARK booted"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK model=$(cat /proc/device-tree/model)"
poweroff -f
"""
LINUX_TIMEOUT = 300  # about 11 s quiet for a minimal VMM in an idle host


def test_debian_arm64_kernel_two_cpus(arm64host) -> None:
    """Debian's arm64 kernel (the Image the host itself boots) with two
    vCPUs, the second brought up through PSCI, to a marker from init,
    then powered off through PSCI SYSTEM_OFF."""
    initrd = make_initrd(LINUX_SCRIPT, modules=False, arch="arm64")
    r, seconds = lkvm_run(arm64host, "-k", str(arm64_guest_kernel()), "-i", str(initrd),
                          "-m", "256", "-c", "2", "-p", "quiet", timeout=LINUX_TIMEOUT)
    print(f"arm64 Debian kernel, 2 vCPUs: lkvm run to poweroff in {seconds:.1f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    marks = dict(line.split("=", 1) for line in r.stdout.splitlines()
                 if line.startswith("MARK ") and "=" in line)
    assert "MARK booted" in r.stdout, out
    assert marks["MARK cpus"].strip() == "2", out
    assert "console=ttyS0" in marks["MARK cmdline"], out
    assert marks["MARK model"].strip("\0\r\n ") == "lkvm", out
