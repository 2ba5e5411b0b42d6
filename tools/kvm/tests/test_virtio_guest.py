"""A tiny guest with its own virtio driver: it finds the legacy virtio-rng
by scanning PCI config space, sets up a queue through the I/O BAR and
polls the used ring.  The doorbell is an ioeventfd served by the I/O
thread, so this is the real exit/ioeventfd path end to end."""

import re

import pytest

from tests.helpers import guest, run_lkvm

pytestmark = pytest.mark.usefixtures("kvm_available")


def random_line() -> bytes:
    r = run_lkvm("run", "-c", "1", "-m", "16", "--rng", "--virtio-transport", "pci-legacy",
                 guest("virtio_rng"))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rb"[0-9a-f]{32}\n", r.stdout), r.stdout
    return r.stdout


def test_guest_reads_random_bytes_over_pci():
    first, second = random_line(), random_line()
    assert first != b"0" * 32 + b"\n"
    assert first != second


def test_guest_finds_no_rng_without_rng():
    r = run_lkvm("run", "-c", "1", "-m", "16", guest("virtio_rng"))
    assert r.returncode == 0 and r.stdout == b"?"


@pytest.mark.parametrize("spec,message", [
    ("/nonexistent.img", b"Fatal: --disk /nonexistent.img: no such file or directory, nor a "
                         b"rootfs in"),
    ("/dev/null,bogus", b"Fatal: --disk /dev/null,bogus: expected file[,ro|,snapshot][,direct]"),
    ("/dev/null,ro,snapshot",
     b"Fatal: disk image /dev/null: ro and snapshot exclude each other"),
    ("/dev/null", b"Fatal: disk image /dev/null is not a regular file or block device"),
])
def test_bad_disks_are_one_line_errors(spec, message):
    r = run_lkvm("run", "-c", "1", "-m", "16", "-d", spec, guest("hello"))
    assert r.returncode != 0
    assert message in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.parametrize("transport", ["pci", "mmio", "mmio-legacy"])
def test_every_transport_starts_and_stops(tmp_path, transport):
    img, ro = tmp_path / "disk.img", tmp_path / "ro.img"
    img.write_bytes(bytes(1 << 20))
    ro.write_bytes(bytes(1 << 20))      # one image cannot be both: it is locked
    r = run_lkvm("run", "-c", "1", "-m", "16", "--rng", "--console", "virtio",
                 "--virtio-transport", transport, "-d", str(img), "-d", f"{ro},ro",
                 guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"


@pytest.mark.parametrize("flag", ["ro", "snapshot"])
def test_read_only_and_snapshot_disks_of_a_file_we_cannot_write(tmp_path, flag):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    img.chmod(0o444)
    r = run_lkvm("run", "-c", "1", "-m", "16", "-d", f"{img},{flag}", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"
    assert img.read_bytes() == bytes(1 << 20)
