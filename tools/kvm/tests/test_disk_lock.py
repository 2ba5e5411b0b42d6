"""Disk images are locked as QEMU locks them: one writer and nobody
else, or any number of read-only users; a second lkvm is told in one
line."""

import pytest

from disk.raw import RawDisk
from kvm.errors import LkvmError
from tests.helpers import guest, run_lkvm


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 1024))
    return str(path)


def test_a_second_writer_is_refused(image):
    first = RawDisk(image)
    try:
        with pytest.raises(LkvmError, match="locked: another program has it open$"):
            RawDisk(image)
        with pytest.raises(LkvmError, match="open for writing"):
            RawDisk(image, readonly=True)
    finally:
        first.close()
    RawDisk(image).close()      # the lock went with the fd


def test_readers_share_and_keep_writers_out(image):
    readers = [RawDisk(image, readonly=True) for _ in range(3)]
    try:
        with pytest.raises(LkvmError, match="locked"):
            RawDisk(image)
    finally:
        for r in readers:
            r.close()


def test_lkvm_run_on_a_locked_image(image, lkvm_home):
    held = RawDisk(image)
    try:
        r = run_lkvm("run", "-d", image, guest("hello"))
    finally:
        held.close()
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    fatal = [ln for ln in r.stderr.decode().splitlines() if "Fatal:" in ln]
    assert len(fatal) == 1 and "is locked" in fatal[0], r.stderr
