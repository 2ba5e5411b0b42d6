"""-d scsi:FILE as lkvm run reads it: LUNs in order on one virtio-scsi
adapter, the root they give a Linux guest, and one-line errors for bad
specs and for kvmtool's vhost-scsi form on a host without vhost-scsi."""

import os

import pytest

from cli.cmd import load_builtin
from rootfs.guestroot import SCSI_ROOT
from tests.helpers import guest, run_lkvm

run = load_builtin("run")


@pytest.fixture
def images(tmp_path):
    paths = [tmp_path / f"lun{i}.img" for i in range(3)]
    for p in paths:
        p.write_bytes(bytes(1 << 20))
    return paths


def test_luns_keep_their_order_and_the_first_is_the_root(images):
    cfg = run.configure(["-k", guest("hello"), "-m", "16", "-c", "1",
                         "-d", f"scsi:{images[0]}", "-d", f"scsi:{images[1]},ro"])
    assert cfg.scsi == (str(images[0]), f"{images[1]},ro") and cfg.disks == ()
    assert cfg.root.cmdline == SCSI_ROOT


def test_a_blk_disk_stays_the_root(images):
    cfg = run.configure(["-k", guest("hello"), "-m", "16", "-c", "1",
                         "-d", f"scsi:{images[0]}", "-d", str(images[1])])
    assert cfg.scsi == (str(images[0]),) and cfg.disks == (str(images[1]),)
    assert cfg.root.cmdline is None


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("transport", ["pci", "pci-legacy", "mmio", "mmio-legacy"])
def test_an_adapter_with_luns_starts_and_stops(images, transport):
    r = run_lkvm("run", "-c", "1", "-m", "16", "--virtio-transport", transport,
                 "-d", f"scsi:{images[0]}", "-d", f"scsi:{images[1]},ro",
                 "-d", f"scsi:{images[2]},snapshot", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Hello, lkvm!\n"


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("spec,message", [
    ("scsi:/nonexistent.img", b"Fatal: unable to open disk image /nonexistent.img: "
                              b"No such file or directory"),
    ("scsi:", b"Fatal: --disk scsi:: expected scsi:file[,ro|,snapshot][,direct]"),
    ("scsi:/dev/null,bogus",
     b"Fatal: --disk scsi:/dev/null,bogus: expected scsi:file[,ro|,snapshot][,direct]"),
    ("scsi:/dev/null", b"Fatal: disk image /dev/null is not a regular file or block device"),
])
def test_bad_luns_are_one_line_errors(spec, message):
    r = run_lkvm("run", "-c", "1", "-m", "16", "-d", spec, guest("hello"))
    assert r.returncode != 0
    assert message in r.stderr and b"Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.usefixtures("kvm_available")
@pytest.mark.skipif(os.path.exists("/dev/vhost-scsi"), reason="this host has vhost-scsi")
def test_vhost_scsi_without_the_device_is_one_line():
    r = run_lkvm("run", "-c", "1", "-m", "16", "-d", "scsi:naa.500140562fe53c45:1",
                 guest("hello"))
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    assert r.stderr.strip() == (
        b"Fatal: --disk scsi:naa.500140562fe53c45:1: a vhost-scsi target needs "
        b"/dev/vhost-scsi, which this host does not have (modprobe vhost_scsi, then set the "
        b"target up in configfs); -d scsi:FILE serves an image without it")
