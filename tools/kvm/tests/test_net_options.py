"""-n/--network and --no-dhcp: kvmtool's syntax and defaults read into
the run configuration, bad input refused in one line with kvmtool's
status, and the NICs made through virtio-setup's makers."""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from include.uapi import lib
from kvm.config import Config, Nic
from kvm.errors import KVMTOOL_DIE, LkvmError
from net.options import default_nics, parse_networks
from tests.fakevm import FakeRouting, FakeVm
from tests.helpers import KVMDIR, TINY_TIMEOUT, guest, run_lkvm
from tests.test_ipc_guests import read_until, running
from virtio import setup
from virtio.mmio import VirtioMmio
from virtio.net import STATUS_OFFSET, Net
from virtio.pci import VirtioPci


def test_a_network_option_without_mode_is_a_tap_as_in_kvmtool():
    (nic,) = parse_networks(["guest_ip=10.0.0.2"])
    assert nic == Nic(mode="tap", guest_ip="10.0.0.2")


def test_every_setting_lands_in_its_field():
    (nic,) = parse_networks(["mode=tap,guest_ip=10.1.1.2,host_ip=10.1.1.1,"
                             "guest_mac=02:AA:bb:cc:dd:ee,host_mac=02:00:00:00:00:01,"
                             "script=/bin/up,downscript=/bin/down,tapif=tap7,vhost=1,"
                             "trans=mmio,mq=4"])
    assert nic == Nic("tap", "10.1.1.2", "10.1.1.1", "02:aa:bb:cc:dd:ee", "02:00:00:00:00:01",
                      "/bin/up", "/bin/down", "tap7", True, "mmio", None, 4)
    assert parse_networks(["mode=tap,fd=5"])[0].fd == 5


def test_each_nic_gets_the_next_default_mac():
    nics = parse_networks(["mode=user", "mode=none", "mode=tap", "mode=user,guest_ip=10.0.0.2"])
    assert [n.guest_mac for n in nics] == ["02:15:15:15:15:15", "02:15:15:15:15:16",
                                           "02:15:15:15:15:17"]
    assert [n.mode for n in nics] == ["user", "tap", "user"]


def test_mode_none_makes_no_nic():
    assert parse_networks(["mode=none"]) == ()


@pytest.mark.parametrize("spec,message", [
    ("mode=slirp", "Unknown network mode slirp, please use user, tap or none"),
    ("mode=user,guest_ip=192.168.33.256", "guest_ip: 192.168.33.256 is not an IPv4 address"),
    ("mode=user,host_ip=localhost", "host_ip: localhost is not an IPv4 address"),
    ("mode=user,guest_mac=02:15:15:15:15", "guest_mac: not a MAC address"),
    ("mode=tap,host_mac=zz:15:15:15:15:15", "host_mac: not a MAC address"),
    ("mode=user,colour=blue", "unknown network parameter 'colour'"),
    ("mode", "mode needs a value"),
    ("mode=tap,vhost=yes", "vhost: yes is not 0 or 1"),
    ("mode=tap,fd=-1", "fd: -1 is not a number"),
    ("mode=tap,trans=virtio", "trans: virtio is not one of"),
    ("mode=user,tapif=tap0", "tapif= is for mode=tap"),
    ("mode=tap,tapif=" + "t" * 16, "tapif: t+ is not an interface name"),
    ("mode=tap,tapif=/dev/tap7", "tapif: /dev/tap7 is not an interface name"),
    ("mode=tap,tapif=tap0,fd=3", "either as fd= or as tapif="),
    ("mode=tap,mq=0", "mq: 0 is not a queue count from 1 to 256"),
    ("mode=tap,mq=257", "mq: 257 is not a queue count from 1 to 256"),
    ("mode=user,mq=2", "mq= is for mode=tap"),
    ("mode=tap,fd=3,mq=2", "mq= opens queues of its own: not with fd="),
])
def test_bad_settings_are_refused(spec, message):
    with pytest.raises(LkvmError, match=message) as e:
        parse_networks([spec])
    assert e.value.status == KVMTOOL_DIE


def test_two_nics_with_one_mac_are_refused():
    with pytest.raises(LkvmError, match="two NICs have the guest MAC 02:15:15:15:15:16"):
        # The second NIC's default MAC is the one the first was given.
        parse_networks(["mode=user,guest_mac=02:15:15:15:15:16", "mode=user"])


# The command line, as a user meets it.
@pytest.mark.parametrize("spec,message", [
    ("mode=slirp", b"Unknown network mode slirp"),
    ("mode=user,guest_ip=1.2.3", b"guest_ip: 1.2.3 is not an IPv4 address"),
    ("mode=user,guest_mac=nonsense", b"guest_mac: not a MAC address: nonsense"),
])
def test_bad_network_options_are_one_line_with_kvmtools_status(spec, message):
    r = run_lkvm("run", "-c", "1", "-m", "16", "-n", spec, guest("hello"))
    assert r.returncode == KVMTOOL_DIE
    assert message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_two_nics_with_one_mac_are_one_line():
    r = run_lkvm("run", "-c", "1", "-m", "16", "-n", "mode=user,guest_mac=02:00:00:00:00:01",
                 "-n", "mode=tap,guest_mac=02:00:00:00:00:01", guest("hello"))
    assert r.returncode == KVMTOOL_DIE
    assert r.stderr.splitlines() == [b"  Fatal: --network: two NICs have the guest MAC "
                                     b"02:00:00:00:00:01"]


@pytest.mark.usefixtures("kvm_available")
def test_missing_passt_is_one_line_saying_how_to_install_it(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))     # no passt on it
    r = subprocess.run([sys.executable, os.path.join(KVMDIR, "lkvm.py"), "run", "-c", "1",
                        "-m", "16", "-n", "mode=user", guest("hello")], env=env,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=TINY_TIMEOUT)
    assert r.returncode == KVMTOOL_DIE
    assert r.stderr.splitlines() == [b"  Fatal: mode=user needs passt: install Debian's passt "
                                     b"package (apt-get install passt, or run make)"]


def test_the_default_nic_without_passt_is_left_out_with_a_warning(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("PATH", str(tmp_path))      # no passt on it
    assert default_nics(linux=True) == ()
    assert capsys.readouterr().err.splitlines() == [
        "  Warning: no passt for the default network, so the guest has none: install "
        "Debian's passt package (apt-get install passt, or run make)"]


def test_a_linux_guest_gets_kvmtools_nic_and_a_flat_binary_none():
    if shutil.which("passt") is None:
        pytest.skip("no passt")
    assert default_nics(linux=True) == (Nic(),)
    assert default_nics(linux=False) == ()


# The makers: one virtio-net per NIC, on its transport.
class FakeBackend:
    """A back end with a real fd for the I/O thread's epoll."""
    offloads = 0

    def __init__(self, nic: Nic) -> None:
        self.nic = nic
        self.ours, self.theirs = socket.socketpair()
        self.polled = 0

    def recv(self) -> list[bytes]:
        self.polled += 1
        return []

    def fileno(self) -> int:
        return self.ours.fileno()

    def set_offloads(self, offloads: int) -> None:
        pass

    def enable(self, on: bool) -> None:
        pass

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def made(monkeypatch):
    backends: list[FakeBackend] = []

    def make(nic: Nic) -> list[FakeBackend]:
        if nic.guest_ip == "0.0.0.0":
            raise LkvmError("this one fails")
        backends.append(FakeBackend(nic))
        return backends[-1:]
    monkeypatch.setattr(setup, "IrqRouting", lambda vm: FakeRouting())
    monkeypatch.setitem(setup.BACKENDS, "user", make)
    return backends


def test_each_nic_is_a_virtio_net_on_its_transport(made):
    nics = parse_networks(["mode=user", "mode=user,trans=mmio,guest_mac=02:00:00:00:00:07"])
    vm = FakeVm()
    ctx = setup.attach(vm, Config(name="t", cpus=1, ram_mib=64, nics=nics), print)
    try:
        devs = [d for d in ctx.devices if isinstance(d, Net)]
        assert [type(d.transport) for d in devs] == [VirtioPci, VirtioMmio]
        assert [bytes(d.config[:6]).hex(":") for d in devs] == ["02:15:15:15:15:15",
                                                                "02:00:00:00:00:07"]
        assert all(d.config[STATUS_OFFSET] == 1 for d in devs)     # link up
        # What a guest reads at the MMIO device's config space.
        mmio = devs[1].transport
        assert bytes(vm.mmio.read(mmio.base + lib.VIRTIO_MMIO_CONFIG + i, 1)
                     for i in range(6)) == bytes.fromhex("020000000007")
        assert [b.nic for b in made] == list(nics)
        # The back end's fd is served by the device's own I/O thread.
        for d, b in zip(devs, made, strict=True):
            ctx.threads[d].handlers[b.fileno()][0]()
            assert b.polled == 1
    finally:
        ctx.exit()
        vm.close()
    assert all(b.ours.fileno() == -1 for b in made)


def test_a_nic_failing_ends_the_back_ends_made_before_it(made):
    cfg = Config(name="t", cpus=1, ram_mib=64,
                 nics=parse_networks(["mode=user", "mode=user,guest_ip=0.0.0.0"]))
    vm = FakeVm()
    with pytest.raises(LkvmError, match="this one fails"):
        setup.attach(vm, cfg, print)
    vm.close()
    assert len(made) == 1 and made[0].ours.fileno() == -1


@pytest.mark.skipif(shutil.which("passt") is None, reason="needs Debian's passt")
def test_passt_dying_mid_run_takes_the_link_down_once_and_lkvm_goes_on(monkeypatch, capsys):
    """Wired as lkvm run wires it: the device's I/O thread sees passt's
    socket close, the link goes down with a config interrupt, and the
    thread keeps serving the device."""
    monkeypatch.setattr(setup, "IrqRouting", lambda vm: FakeRouting())
    vm = FakeVm()
    ctx = setup.attach(vm, Config(name="t", cpus=1, ram_mib=64, nics=(Nic(),)), print)
    (dev,) = ctx.devices
    config_irq = threading.Event()
    dev.transport.signal_config = config_irq.set
    ctx.init()
    try:
        os.kill(dev.backends[0].proc.pid, signal.SIGKILL)
        assert config_irq.wait(5)
        assert not dev.read_config(STATUS_OFFSET, 2) & lib.VIRTIO_NET_S_LINK_UP
        assert ctx.threads[dev].thread.is_alive()
    finally:
        ctx.exit()
        vm.close()
    err = capsys.readouterr().err
    assert err.count("the guest's link is down") == 1, err
    assert "passt killed by signal 9" in err


def test_the_default_nic_is_kvmtools():
    assert dataclasses.asdict(Nic()) == {
        "mode": "user", "guest_ip": "192.168.33.15", "host_ip": "192.168.33.1",
        "guest_mac": "02:15:15:15:15:15", "host_mac": "02:01:01:01:01:01", "script": None,
        "downscript": None, "tapif": None, "vhost": False, "trans": None, "fd": None,
        "mq": 1}


# A tiny guest's own view: it scans PCI for legacy virtio-nets and
# prints the MAC in each one's config space.
@pytest.mark.usefixtures("kvm_available")
@pytest.mark.parametrize("options,seen", [
    (["-n", "mode=user", "-n", "mode=user,guest_mac=02:AA:bb:cc:dd:ee",
      "-n", "mode=user,trans=mmio"], b"021515151515\n02aabbccddee\n"),
    ([], b"?"),                     # a flat binary gets no default NIC
    (["-n", "mode=none"], b"?"),
])
def test_the_guest_finds_each_nic_with_its_mac(options, seen):
    r = run_lkvm("run", "-c", "1", "-m", "16", "--virtio-transport", "pci-legacy", *options,
                 guest("virtio_net_mac"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == seen


def children(pid: int) -> list[int]:
    """The children lkvm's main thread started (passt is one): its other
    threads come and go, so their lists cannot be read race-free."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.usefixtures("kvm_available", "lkvm_home")
@pytest.mark.skipif(shutil.which("passt") is None, reason="needs Debian's passt")
def test_lkvm_outlives_passt_and_says_so_once():
    with running("netdown", opts=("-n", "mode=user")) as p:
        (passt,) = children(p.pid)
        os.kill(passt, signal.SIGKILL)
        read_until(p.stderr, b"the guest's link is down\n")
        assert p.poll() is None
        r = run_lkvm("stop", "-n", "netdown")
        assert r.returncode == 0, r.stderr
        assert p.wait(TINY_TIMEOUT) == 0
        assert b"link is down" not in p.stderr.read()
