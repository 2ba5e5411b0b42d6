"""Numbers the uapi headers have are taken from them, and every ioctl is
named where it is issued, so grepping for one finds its use."""

import ast
import glob
import os
import subprocess

import pytest

from include.uapi import ffi, lib
from tests.helpers import KVMDIR
from virtio.pci import LEGACY_DEVICE
from x86 import zeropage


def lkvm_sources() -> list[str]:
    paths = glob.glob(os.path.join(KVMDIR, "**", "*.py"), recursive=True)
    return sorted(p for p in paths if not p.startswith(
        (os.path.join(KVMDIR, "tests"), os.path.join(KVMDIR, "bench"))))


@pytest.mark.parametrize("path", lkvm_sources(), ids=lambda p: os.path.relpath(p, KVMDIR))
def test_no_ioctl_name_is_built(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                and ast.unparse(node.args[0]) == "lib":
            name = node.args[1]
            assert not (isinstance(name, ast.JoinedStr) and "KVM_" in ast.unparse(name)), \
                f"line {node.lineno}: name the ioctl as lib.KVM_..."


@pytest.mark.parametrize("ioctl", ["KVM_SET_CPUID2", "KVM_GET_SREGS", "KVM_SET_REGS",
                                   "KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_GET_MP_STATE"])
def test_grep_finds_each_vcpu_ioctl(ioctl):
    r = subprocess.run(["grep", "-rlw", "--include=*.py", f"lib.{ioctl}",
                        os.path.join(KVMDIR, "x86")], capture_output=True, text=True)
    assert r.stdout, f"no use of {ioctl} found"


@pytest.mark.parametrize("path", lkvm_sources(), ids=lambda p: os.path.relpath(p, KVMDIR))
def test_no_magic_number_is_copied(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    copies = {lib.V9FS_MAGIC: "V9FS_MAGIC"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            assert node.value not in copies, f"line {node.lineno}: use lib.{copies[node.value]}"


def test_the_headers_numbers():
    assert zeropage.HDR_OFFSET == 0x1F1 == ffi.offsetof("struct boot_params", "hdr")
    assert zeropage.MAGIC_OFFSET == 0x202
    assert sorted(LEGACY_DEVICE.values()) == sorted(
        getattr(lib, n) for n in dir(lib) if n.startswith("VIRTIO_TRANS_ID_"))


def test_guest_debug_is_set_in_one_place():
    """--debug-single-step and the gdb stub's arch targets all program a
    vCPU's debugging through kvm/guestdebug.py's set_guest_debug()."""
    users = set()
    for path in lkvm_sources():
        with open(path) as f:
            tree = ast.parse(f.read())
        if any(isinstance(node, ast.Attribute) and node.attr == "KVM_SET_GUEST_DEBUG"
               for node in ast.walk(tree)):
            users.add(os.path.relpath(path, KVMDIR))
    assert users == {os.path.join("kvm", "guestdebug.py")}
