"""The arm64 test host: Debian's arm64 kernel at EL2 under QEMU's TCG, whose
/dev/kvm lkvm's arm64 bindings drive. One boot, a few seconds of TCG."""

import time

import pytest

from tests.helpers import KVMDIR

pytestmark = pytest.mark.e2e

# Run by python3 in tools/kvm on the arm64 host: which bindings it loaded,
# and what two ioctls answer, one line each ("NAME value").
PROBE = """
import os
import include._uapi
from include.uapi import ffi, lib

print("bindings", os.path.basename(include._uapi.__file__))
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
print("KVM_GET_API_VERSION", lib.lkvm_ioctl(kvm, lib.KVM_GET_API_VERSION, 0))
vm = lib.lkvm_ioctl(kvm, lib.KVM_CREATE_VM, 0)
init = ffi.new("struct kvm_vcpu_init *")
if lib.lkvm_ioctl_ptr(vm, lib.KVM_ARM_PREFERRED_TARGET, init):
    raise OSError(ffi.errno, os.strerror(ffi.errno), "KVM_ARM_PREFERRED_TARGET")
names = [n for n in dir(lib) if n.startswith("KVM_ARM_TARGET_")]
target = [n for n in names if getattr(lib, n) == init.target] or [init.target]
print("KVM_ARM_PREFERRED_TARGET", *target)
"""


def test_arm64_bindings_drive_arm64_kvm(arm64host) -> None:
    start = time.monotonic()
    r = arm64host.run(["python3", "-c", PROBE], timeout=120, cwd=KVMDIR)
    print(f"arm64 host: boot and probe in {time.monotonic() - start:.1f} s")
    assert r.returncode == 0, r.stderr
    found = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert found["bindings"].endswith("-aarch64-linux-gnu.so")
    assert found["KVM_GET_API_VERSION"] == "12"
    assert found["KVM_ARM_PREFERRED_TARGET"].startswith("KVM_ARM_TARGET_")
