"""/dev/kvm problems reach the user as one line that says what to do."""

import pytest

from kvm.errors import LkvmError
from kvm.kvm import Kvm


def test_missing_device_names_the_module(tmp_path):
    with pytest.raises(LkvmError, match="is the kvm module loaded"):
        Kvm(str(tmp_path / "kvm"))


def test_not_a_kvm_device(tmp_path):
    # A plain file opens but is no KVM: the API version ioctl fails.
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    with pytest.raises(LkvmError, match="not a KVM device"):
        Kvm(str(path))
