"""ppc64 guests under lkvm on KVM-HV (e2e: in the ppc64 test host where
this machine is no ppc64le one with KVM).  The tiny guest of
tests/guests/ppc64 prints through H_PUT_TERM_CHAR on the hypervisor
console and powers off through RTAS, both hypercalls lkvm answers."""

import os
import time

import pytest

from tests.helpers import GUESTS, KVMDIR

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
