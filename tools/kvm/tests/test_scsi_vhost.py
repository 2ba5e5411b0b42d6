"""kvmtool's -d scsi:WWPN:TPGT: a virtio-scsi adapter whose queues the
kernel's vhost-scsi serves, against a fake vhost kernel (this machine has
no /dev/vhost-scsi; the e2e tier runs the real one in the test host)."""

import errno
import os

import pytest

from include.uapi import ffi, lib
from kvm.config import Config
from kvm.errors import LkvmError
from tests.fakevhost import FakeVhostKernel, KickTransport, driven
from tests.fakevm import FakeVm, context
from virtio import setup
from virtio.mock import Driver, mock_memory
from virtio.scsi import MAX_WWPN, VhostScsi
from virtio.vhost import Vhost

WWPN = "naa.5001405abcdef012"


def adapter(mem: object, wwpn: str = WWPN, tpgt: int = 1) -> tuple[VhostScsi, Driver,
                                                                   KickTransport]:
    dev = VhostScsi(mem, wwpn, tpgt, Vhost(os.devnull, "test", mem, 3))
    return dev, *driven(dev)


def test_the_rings_go_to_vhost_then_the_endpoint_is_set(vhost_kernel):
    mem = mock_memory()
    dev, drv, transport = adapter(mem)
    assert dev.offered() == FakeVhostKernel.FEATURES
    queues = drv.start()
    host = {r.gpa: r.host for r in mem.regions}
    calls = dev.vhost.fallback
    assert vhost_kernel.calls[2:] == [
        ("VHOST_SET_FEATURES", FakeVhostKernel.FEATURES),
        *[c for q, dq in enumerate(queues) for c in (
            ("VHOST_SET_VRING_NUM", q, dq.size),
            ("VHOST_SET_VRING_BASE", q, 0),
            ("VHOST_SET_VRING_ADDR", q, host[0] + dq.desc, host[0] + dq.avail, host[0] + dq.used),
            ("VHOST_SET_VRING_KICK", q, transport.kicks[q]))],
        *[("VHOST_SET_VRING_CALL", q, calls[q]) for q in range(3)],
        ("VHOST_SCSI_SET_ENDPOINT", lib.VHOST_SCSI_ABI_VERSION, WWPN, 1)]
    assert not any(fd in transport.iothread.handlers for fd in transport.kicks)
    # Each ring is kicked once: requests the driver made before the
    # hand-over, their kicks taken by lkvm, are vhost's to find.
    assert [os.eventfd_read(fd) for fd in transport.kicks] == [1, 1, 1]
    del vhost_kernel.calls[:]
    dev.reset()
    # The worker stops before the rings come back to lkvm.
    assert vhost_kernel.calls[0] == ("VHOST_SCSI_CLEAR_ENDPOINT", lib.VHOST_SCSI_ABI_VERSION,
                                     WWPN, 1)
    assert all(fd in transport.iothread.handlers for fd in transport.kicks)
    dev.close()
    transport.close()


def test_a_refused_endpoint_fails_the_device_and_takes_the_rings_back(vhost_kernel, capsys):
    vhost_kernel.refuse["VHOST_SCSI_SET_ENDPOINT"] = errno.ENOENT   # no such target
    dev, drv, transport = adapter(mock_memory())
    drv.start()
    assert dev.broken and not dev.vhost.running
    assert all(fd in transport.iothread.handlers for fd in transport.kicks)
    assert "/dev/null: No such file or directory; device needs reset" in capsys.readouterr().err
    dev.close()
    transport.close()


def test_kicks_before_the_hand_over_are_left_alone(vhost_kernel):
    dev, drv, transport = adapter(mock_memory())
    drv.negotiate()
    q = drv.setup_queue(2)
    q.add([bytes(51)], [108])
    dev.notify(2)                # the driver is not ready: nothing to do
    assert q.used_idx() == 0 and not dev.broken
    dev.close()
    transport.close()


def test_the_config_is_vhost_scsis_and_the_driver_cannot_change_it(vhost_kernel):
    dev, _, transport = adapter(mock_memory())
    cfg = "struct virtio_scsi_config"

    def field(name: str) -> int:
        size = ffi.sizeof(dict(ffi.typeof(cfg).fields)[name].type)
        return dev.read_config(ffi.offsetof(cfg, name), size)

    assert field("num_queues") == 1 and field("max_lun") == 16383
    assert field("max_target") == 255   # the tags of the WWPN's TPGs
    assert field("sense_size") == lib.VIRTIO_SCSI_SENSE_DEFAULT_SIZE
    dev.write_config(ffi.offsetof(cfg, "sense_size"), 4, 32)
    assert field("sense_size") == lib.VIRTIO_SCSI_SENSE_DEFAULT_SIZE
    dev.close()
    transport.close()


@pytest.mark.parametrize("spec", [f"naa.{'5' * MAX_WWPN}:1", f"{WWPN}:65536"])
def test_a_bad_wwpn_or_tpgt_is_one_line(spec, vhost_kernel, monkeypatch):
    monkeypatch.setattr(setup, "VHOST_SCSI", os.devnull)
    with pytest.raises(LkvmError) as e:
        setup.vhost_scsi(mock_memory(), spec)
    assert str(e.value) == (f"--disk scsi:{spec}: a vhost-scsi WWPN has 1 to {MAX_WWPN - 1} "
                            "bytes and a TPGT is at most 65535")


@pytest.mark.parametrize("spec, wwpn, tpgt", [
    ("naa.500140571c9308aa", "naa.500140571c9308aa", 0),      # kvmtool's io-testing.txt
    (f"{WWPN}:3", WWPN, 3),
    ("iqn.2003-01.org.linux-iscsi.h:sn.1", "iqn.2003-01.org.linux-iscsi.h:sn.1", 0),
    ("iqn.2003-01.org.linux-iscsi.h:sn.1:7", "iqn.2003-01.org.linux-iscsi.h:sn.1", 7),
])
def test_wwpn_and_tpgt_as_kvmtool_reads_them(spec, wwpn, tpgt, vhost_kernel, monkeypatch):
    monkeypatch.setattr(setup, "VHOST_SCSI", os.devnull)
    assert setup.is_vhost_scsi(spec)
    mem = mock_memory()
    dev = setup.vhost_scsi(mem, spec)
    drv, transport = driven(dev)
    drv.start()
    assert vhost_kernel.calls[-1] == ("VHOST_SCSI_SET_ENDPOINT", 1, wwpn, tpgt)
    dev.close()
    transport.close()


def test_an_image_file_is_never_taken_for_a_wwpn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "naa.5001405abcdef012").write_bytes(bytes(512))
    assert not setup.is_vhost_scsi("naa.5001405abcdef012")
    assert not setup.is_vhost_scsi("disk.img") and not setup.is_vhost_scsi("lun:1")


@pytest.mark.parametrize("order", [["vhost", "image", "vhost2"], ["image", "vhost"],
                                   ["image", "vhost", "image2"]])
def test_adapters_come_in_the_order_of_their_first_option(order, tmp_path, vhost_kernel,
                                                         monkeypatch):
    """With no virtio-blk disk the first -d scsi: is the root, sda: the
    guest names disks in the order it finds the adapters."""
    monkeypatch.setattr(setup, "VHOST_SCSI", os.devnull)
    specs = {"vhost": f"{WWPN}:1", "vhost2": f"{WWPN}:2"}
    for name in ("image", "image2"):
        (tmp_path / name).write_bytes(bytes(1 << 20))
        specs[name] = str(tmp_path / name)
    vm = FakeVm()
    ctx = context(vm)
    cfg = Config(name="scsi", cpus=1, ram_mib=16, scsi=tuple(specs[o] for o in order))
    ctx.devices = setup.scsi(ctx, cfg, lambda data: None)
    try:
        got = [dev.endpoint.vhost_tpgt if isinstance(dev, VhostScsi) else "image"
               for dev in ctx.devices]
        kinds = {"vhost": 1, "vhost2": 2, "image": "image", "image2": "image"}
        want = list(dict.fromkeys(kinds[o] for o in order))
        assert got == want
    finally:
        ctx.exit()
        vm.close()
