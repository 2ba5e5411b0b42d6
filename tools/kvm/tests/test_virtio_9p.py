"""virtio-9p through the mock driver: the mount tag in config space, and
9P messages split across descriptors as Linux sends them."""

import importlib
import os

import pytest

from include.uapi import lib
from kvm.errors import LkvmError
from tests.test_virtio_fuzz import fuzz_device
from virtio.mock import Driver, mock_memory
from virtio.p9.client import parse
from virtio.p9.wire import Msg, message, pack

P9 = importlib.import_module("virtio.9p").P9


def test_mount_tag_in_config(tmp_path):
    dev = P9(mock_memory(), str(tmp_path), "hostshare")
    assert dev.features >> lib.VIRTIO_9P_MOUNT_TAG & 1
    assert dev.read_config(0, 2) == len("hostshare")
    assert bytes(dev.config[2:]) == b"hostshare"
    dev.close()


def test_version_across_descriptors(tmp_path):
    (tmp_path / "hello").write_text("hi")
    dev = P9(mock_memory(), str(tmp_path))
    (q,) = Driver(dev).start()
    req = message(Msg.TVERSION, 0xFFFF, pack("ds", 8192, b"9P2000.L"))
    q.add([req[:3], req[3:9], req[9:]], [100, 8092])
    q.kick()
    ((_, written, data),) = q.collect()
    rtype, _, fields = parse(data[:written])
    assert rtype == Msg.TVERSION + 1 and fields == [8192, b"9P2000.L"]
    dev.close()


def test_hostile_messages_and_chains(request, tmp_path):
    fuzz_device(request, P9(mock_memory(), str(tmp_path)), "9p")
    assert os.listdir(tmp_path) == []


def test_bad_share_is_an_error(tmp_path):
    with pytest.raises(LkvmError, match="not a directory"):
        P9(mock_memory(), str(tmp_path / "missing"))
    with pytest.raises(LkvmError, match="1 to 32 bytes"):
        P9(mock_memory(), str(tmp_path), "x" * 33)
