"""ppc64 guests under lkvm on KVM-HV (e2e: in the ppc64 test host where
this machine is no ppc64le one with KVM).  The tiny guest of
tests/guests/ppc64 prints through H_PUT_TERM_CHAR on the hypervisor
console and powers off through RTAS, both hypercalls lkvm answers; then
Debian's ppc64el kernel (the host's own vmlinux) to a marker from init."""

import os
import time

import pytest

from tests.helpers import GUESTS, KVMDIR
from tests.testhost import make_initrd, ppc64_guest_kernel

pytestmark = pytest.mark.e2e

LKVM = os.path.join(KVMDIR, "lkvm.py")
TINY_TIMEOUT = 120  # python3 starts in a second or two in the emulated host


def test_tiny_ppc64_guest(ppc64host) -> None:
    hello = os.path.join(GUESTS, "ppc64", "hello.bin")
    assert os.path.exists(hello), "run make"
    start = time.monotonic()
    r = ppc64host.run(["python3", LKVM, "run", "-k", hello, "-m", "64", "--console", "hv"],
                      timeout=TINY_TIMEOUT, cwd=KVMDIR)
    print(f"ppc64 tiny guest: lkvm run to RTAS power-off in {time.monotonic() - start:.2f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hello from ppc64\n" in r.stdout, r.stdout + r.stderr
    assert "KVM session ended normally" in r.stdout + r.stderr


# What the Linux guest's init prints: the marker, and what lkvm told it.
LINUX_SCRIPT = r"""
echo "MARK booted"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK model=$(cat /proc/device-tree/model)"
echo "MARK mmu=$(grep ^MMU /proc/cpuinfo)"
"""
LINUX_TIMEOUT = 300


def test_debian_ppc64_kernel_two_cpus(ppc64host) -> None:
    """Debian's ppc64el vmlinux on the radix MMU, the hypervisor console
    and the in-kernel XICS with two vCPUs, the second started through
    RTAS start-cpu, to a marker from init, then rebooted through RTAS,
    which ends lkvm."""
    initrd = make_initrd(LINUX_SCRIPT, modules=False, arch="ppc64el")
    start = time.monotonic()
    r = ppc64host.run(["python3", LKVM, "run", "-k", str(ppc64_guest_kernel()), "-i", str(initrd),
                       "-m", "512", "-c", "2", "--console", "hv", "-p", "quiet"],
                      timeout=LINUX_TIMEOUT, cwd=KVMDIR)
    print(f"ppc64 Debian kernel, 2 vCPUs: lkvm run to reboot in {time.monotonic() - start:.1f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    marks = dict(line.split("=", 1) for line in r.stdout.splitlines()
                 if line.startswith("MARK ") and "=" in line)
    assert "MARK booted" in r.stdout, out
    assert marks["MARK cpus"].strip() == "2", out
    assert "console=hvc0" in marks["MARK cmdline"], out
    assert marks["MARK model"].strip("\0\r\n ") == "IBM pSeries (emulated by lkvm)", out
    assert "Radix" in marks["MARK mmu"], out
    assert "testhost-l2: exit 0" in r.stdout, out
