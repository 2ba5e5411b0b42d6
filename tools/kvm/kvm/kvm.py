"""/dev/kvm: the system handle, its capabilities and VM creation."""

import errno
import os
import stat

from include.uapi import lib
from kvm.errors import LkvmError
from kvm.ioctl import ioctl, ioctl_fd

KVM_DEV = "/dev/kvm"

# Why /dev/kvm could not be opened, as a hint the user can act on.
OPEN_HINTS = {
    errno.ENOENT: "is the kvm module loaded (modprobe kvm_intel or kvm_amd)?",
    errno.ENODEV: "is the kvm module loaded (modprobe kvm_intel or kvm_amd)?",
    errno.EACCES: "no permission: add yourself to the 'kvm' group",
    errno.EPERM: "no permission: add yourself to the 'kvm' group",
}


class Kvm:
    """The open /dev/kvm.  lkvm trusts it instead of checking CPUID for
    vmx/svm: a nested or paravirtual KVM works without either flag."""

    def __init__(self, path: str = KVM_DEV) -> None:
        # Opened without blocking, then checked: --dev may name a FIFO,
        # whose open would wait for a writer for ever.
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            hint = OPEN_HINTS.get(e.errno, e.strerror)
            raise LkvmError(f"cannot open {path}: {hint}") from None
        if not stat.S_ISCHR(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise LkvmError(f"{path} is not a KVM device")
        try:
            version = ioctl(self.fd, lib.KVM_GET_API_VERSION)
        except OSError:
            os.close(self.fd)
            raise LkvmError(f"{path} is not a KVM device") from None
        if version != lib.KVM_API_VERSION:
            raise LkvmError(f"KVM API version {version}, lkvm needs {lib.KVM_API_VERSION}")
        self.vcpu_mmap_size = ioctl(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, lib.KVM_CHECK_EXTENSION, cap)

    def require(self, *caps: str) -> None:
        """Fail in one line if the host lacks a capability lkvm needs."""
        for name in caps:
            if not self.check_extension(getattr(lib, name)):
                raise LkvmError(f"the host's KVM lacks {name}")

    def create_vm(self) -> int:
        try:
            return ioctl_fd(self.fd, lib.KVM_CREATE_VM, 0)
        except OSError as e:
            raise LkvmError(f"KVM_CREATE_VM failed: {e.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)
