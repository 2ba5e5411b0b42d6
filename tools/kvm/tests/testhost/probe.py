"""Does this host need the L1 test host? Decided by how fast /dev/kvm runs CPL0 code.

probe.c runs 100,000 iterations of a two-instruction loop in real mode. Where
KVM runs guest CPL0 natively that takes well under a millisecond (about 1 ms
even inside L1's nested KVM); on nested PVM, which emulates CPL0, ~80 ms.
The probe is C compiled at run time so its ioctl numbers come from
<linux/kvm.h>, not from numbers copied here.
"""

import functools
import os
import shutil
import subprocess
from pathlib import Path

from . import cache
from .cache import TestHostError

SOURCE = Path(__file__).with_name("probe.c")
THRESHOLD_NS = 10_000_000


def _binary() -> Path:
    src = SOURCE.read_bytes()
    if shutil.which("gcc") is None:
        raise TestHostError("gcc not found: needed to build the KVM probe")

    def compile_(tmp: Path) -> None:
        subprocess.run(
            ["gcc", "-O2", "-o", str(tmp), str(SOURCE)], check=True, timeout=120
        )

    return cache.build(cache.root() / f"probe-{cache.digest(src)}", compile_)


def measure() -> tuple[bool, int]:
    """(whether the loop ended in a HLT exit, its duration in ns)."""
    try:
        done = subprocess.run(
            [str(_binary())], check=False, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False, 60 * 10**9  # a stuck CPL0 guest is as bad as a slow one
    if done.returncode:
        raise TestHostError(f"KVM probe failed: {done.stderr.strip()}")
    words = done.stdout.split()
    return words[0] == "hlt", int(words[-1])


@functools.cache
def needed() -> bool:
    """True when e2e guests must run inside L1: no usable /dev/kvm, or one that
    runs CPL0 code slowly or not at all. LKVM_TESTHOST=l1|direct overrides."""
    forced = os.environ.get("LKVM_TESTHOST")
    if forced in ("l1", "direct"):
        return forced == "l1"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return True  # L1 runs on TCG, so it brings its own KVM
    halted, ns = measure()
    return not halted or ns > THRESHOLD_NS
