"""One generator of struct formats for the kernel's and the guest's
structures: every field where cffi puts it, signed where C says so."""

import importlib.util

import pytest

from include.uapi import ffi
from kvm.cstruct import packer, reader, to_bytes


def test_every_scalar_field_by_default():
    desc = to_bytes("struct vring_desc", addr=2**64 - 1, len=7, flags=3, next=9)
    assert packer("struct vring_desc").unpack(desc) == (2**64 - 1, 7, 3, 9)


def test_signed_fields_unpack_signed():
    efd = ffi.new("struct kvm_ioeventfd *", {"fd": -1, "len": 4, "addr": 0x3F8})
    fmt, at = reader("struct kvm_ioeventfd", ("addr", "len", "fd"))
    assert fmt.unpack_from(ffi.buffer(efd), at) == (0x3F8, 4, -1)


def test_a_field_subset_skips_what_lies_between():
    fmt, at = reader("struct vring_desc", ("len", "next"), base=100)
    assert at == 100 + ffi.offsetof("struct vring_desc", "len")
    data = bytes(100) + to_bytes("struct vring_desc", len=5, flags=0xFFFF, next=2)
    assert fmt.unpack_from(data, at) == (5, 2)
    with pytest.raises(ValueError, match="offset order"):
        packer("struct vring_desc", ("next", "len"))


def test_one_generator():
    assert importlib.util.find_spec("kvm.layout") is None
    assert importlib.util.find_spec("virtio.cstruct") is None
