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
from net.tap import Tap

def links():
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout
    return {l["ifname"]: [a["local"] + "/" + str(a["prefixlen"]) for a in l["addr_info"]
                          if a["family"] == "inet"] for l in json.loads(out)}

mac = bytes.fromhex("021515151515")
tap = Tap(Nic(mode="tap", host_ip="10.9.9.1"))
during = links()
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton("10.9.9.15") + \
    bytes(6) + socket.inet_aton("10.9.9.1")
tap.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
reply, deadline = None, time.monotonic() + 5
while reply is None and (left := deadline - time.monotonic()) > 0:
    select.select([tap.fileno()], [], [], left)
    for f in tap.recv():
        if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
            reply = socket.inet_ntoa(f[28:32])
name = tap.ifname
tap.close()
print(json.dumps({"name": name, "during": during, "reply": reply, "after": links()}))
"""


def in_netns(*argv: str) -> subprocess.CompletedProcess:
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
