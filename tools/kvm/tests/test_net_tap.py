"""mode=tap on this machine's /dev/net/tun, each case in a network
namespace of its own (unshare -n) so that no tap or address reaches the
host's: the tap made and given host_ip through netlink, frames both ways
(the host kernel answers an ARP request), the tap and its address gone
at exit; script= and downscript= run as kvmtool runs them; tapif= left
as its owner set it up; and one-line errors for what cannot work."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from kvm.errors import KVMTOOL_DIE
from tests.helpers import KVMDIR, LKVM, TINY_TIMEOUT, guest, run_lkvm

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or not shutil.which("unshare"),
    reason="needs root, /dev/net/tun and unshare")

# Runs in the namespace: a Tap as the net maker makes one, the host's
# view of it, an ARP request for host_ip through it, the view after close.
PROBE = r"""
import json, select, socket, struct, subprocess, time
from kvm.config import Nic
from net.tap import open_tap

def links():
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout
    return {l["ifname"]: [a["local"] + "/" + str(a["prefixlen"]) for a in l["addr_info"]
                          if a["family"] == "inet"] for l in json.loads(out)}

mac = bytes.fromhex("021515151515")
(tap,) = open_tap(Nic(mode="tap", host_ip="10.9.9.1"))
hdr = bytes(10)     # each frame's virtio_net_hdr: no offload asked
during = links()
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton("10.9.9.15") + \
    bytes(6) + socket.inet_aton("10.9.9.1")
tap.send(hdr + b"\xff" * 6 + mac + b"\x08\x06" + arp)
reply, deadline = None, time.monotonic() + 5
while reply is None and (left := deadline - time.monotonic()) > 0:
    select.select([tap.fileno()], [], [], left)
    for f in (f[10:] for f in tap.recv()):
        if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
            reply = socket.inet_ntoa(f[28:32])
name = tap.ifname
tap.close()
print(json.dumps({"name": name, "during": during, "reply": reply, "after": links()}))
"""


def in_netns(*argv: str) -> subprocess.CompletedProcess:
    """argv in a network namespace of its own (and others unshare(1)'s
    options before it ask for)."""
    return subprocess.run(["unshare", "-n", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TINY_TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=KVMDIR))


def test_a_new_tap_gets_host_ip_carries_frames_and_goes_at_exit():
    r = in_netns(sys.executable, "-c", PROBE)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["during"][seen["name"]] == ["10.9.9.1/24"]
    assert seen["reply"] == "10.9.9.1"      # the host kernel's ARP answer came back
    assert seen["name"] not in seen["after"]


def test_script_and_downscript_get_the_taps_name(tmp_path):
    log = tmp_path / "log"
    for name, what in (("up", "up"), ("down", "down")):
        script = tmp_path / name
        # Whether lkvm set an address itself, and whether the tap is still there.
        script.write_text(f'#!/bin/sh\necho {what} "$1" $(ip -o -4 addr show dev "$1" | wc -l) '
                          f'$(ip link show dev "$1" >/dev/null && echo there) >> {log}\n')
        script.chmod(0o755)
    r = in_netns(LKVM, "run", "-c", "1", "-m", "16", "-n",
                 f"mode=tap,script={tmp_path}/up,downscript={tmp_path}/down", guest("hello"))
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["up tap0 0 there", "down tap0 0 there"]


def test_tapif_attaches_to_an_existing_tap_and_leaves_it_alone():
    r = in_netns("sh", "-ec", f"""
        ip tuntap add dev ltap0 mode tap
        {LKVM} run -c 1 -m 16 --virtio-transport pci-legacy -n mode=tap,tapif=ltap0 \
            {guest("virtio_net_mac")}
        echo; ip -o -4 addr show dev ltap0 | wc -l""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["021515151515", "", "0"]


def test_a_failing_script_is_one_line(tmp_path):
    r = in_netns(LKVM, "run", "-c", "1", "-m", "16", "-n", "mode=tap,script=/bin/false",
                 guest("hello"))
    assert r.returncode == KVMTOOL_DIE
    assert r.stderr.splitlines() == ["  Fatal: script= /bin/false tap0 failed with status 1"]


@pytest.mark.parametrize("spec,message", [
    ("mode=tap,fd=99", b"  Fatal: fd=99 is no tap: Bad file descriptor"),
])
def test_a_tap_that_cannot_be_had_is_one_line(spec, message):
    r = run_lkvm("run", "-c", "1", "-m", "16", "-n", spec, guest("hello"))
    assert r.returncode == KVMTOOL_DIE
    assert r.stderr.splitlines() == [message]


@pytest.mark.skipif(os.path.exists("/dev/vhost-net"), reason="this host has vhost-net")
def test_vhost_without_vhost_net_is_one_clear_line():
    r = run_lkvm("run", "-c", "1", "-m", "16", "-n", "mode=tap,vhost=1", guest("hello"))
    assert r.returncode == KVMTOOL_DIE
    assert r.stderr.splitlines() == [b"  Fatal: vhost=1 needs /dev/vhost-net, which this host "
                                     b"does not have (modprobe vhost_net); leave vhost= out to "
                                     b"use lkvm's own queues"]


# Runs in the namespace: a virtio-net on a two-queue tap through the mock
# driver.  The guest's ARP request teaches the host its MAC; its ping
# then goes out with the checksum left to complete (NEEDS_CSUM), which
# only a vnet header carries; the host's reply comes back (on the first
# queue: the second is detached until the driver asks for two pairs).
DEVICE_PROBE = r"""
import json, os, select, socket, struct, time
from include.uapi import lib
from kvm.config import Nic
from net.tap import open_tap
from virtio.mock import Driver, mock_memory
from virtio.net import HDR_MRG, Net

mac = bytes.fromhex("021515151515")
queues = lambda: sorted(os.listdir("/sys/class/net/tap0/queues"))
dev = Net(mock_memory(), open_tap(Nic(mode="tap", host_ip="10.9.9.1", mq=2)), mac)
drv = Driver(dev)
rx, tx, rx1, tx1, ctrl = drv.start()

def ip_header(proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                    socket.inet_aton("10.9.9.15"), socket.inet_aton("10.9.9.1"))
    total = sum(struct.unpack("!10H", h))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return h[:10] + struct.pack("!H", ~total & 0xFFFF) + h[12:]

def send(hdr, frame):
    tx.add([hdr + frame], [])
    tx.kick()

def wait(match):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        while len(rx.free) > 1:
            rx.add([], [2048])
        rx.kick()
        select.select([dev.backends[0].fileno()], [], [], 0.1)
        dev.receive(0)
        for _, n, data in rx.collect():
            if (found := match(data[:n])) is not None:
                return found

plain = HDR_MRG.pack(0, 0, 0, 0, 0, 0, 0)
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton("10.9.9.15") + \
    bytes(6) + socket.inet_aton("10.9.9.1")
send(plain, b"\xff" * 6 + mac + b"\x08\x06" + arp)
host_mac = wait(lambda d: d[12 + 22:12 + 28] if d[12 + 12:12 + 14] == b"\x08\x06" and
                d[12 + 20:12 + 22] == b"\x00\x02" else None)
icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"lkvm" * 8      # checksum left 0
partial = HDR_MRG.pack(lib.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 14 + 20, 2, 0)
send(partial, host_mac + mac + b"\x08\x00" + ip_header(1, icmp) + icmp)
reply = wait(lambda d: d[12 + 34:12 + 42].hex() if d[12 + 23] == 1 and d[12 + 34] == 0
             else None)
before = queues()
ctrl.add([struct.pack("<BBH", lib.VIRTIO_NET_CTRL_MQ, 0, 2)], [1])
ctrl.kick()
ack = ctrl.collect()[0][2]
after = queues()
dev.close()
print(json.dumps({"before": before, "ack": ack.hex(), "after": after, "reply": reply,
                  "dropped": dev.dropped}))
"""


def test_the_device_offloads_checksums_and_spreads_queues_through_the_tap():
    # A mount namespace too, for a sysfs that shows the namespace's tap.
    r = in_netns("-m", "sh", "-c", 'mount -t sysfs sysfs /sys && exec "$0" -c "$1"',
                 sys.executable, DEVICE_PROBE)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["before"] == ["rx-0", "tx-0"]
    assert seen["ack"] == "00" and seen["after"] == ["rx-0", "rx-1", "tx-0", "tx-1"]
    assert seen["reply"] is not None and seen["reply"].endswith("12340001")  # echo reply
    assert seen["dropped"] == 0
