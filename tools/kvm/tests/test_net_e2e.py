"""virtio-net as a user meets it, through the nested test host where this
KVM can't run Linux, on the default rootfs:

- the default user-mode NIC: ip=dhcp has the kernel lease 192.168.33.15
  from passt; the guest fetches a file from an HTTP server on the host's
  loopback through 192.168.33.1, byte for byte, and prints what it sees
  (address, routes, the lease's DNS), for the record;
- the same run by an unprivileged user;
- mode=tap, with and without vhost=1 (and with two queue pairs): the
  guest takes an address in host_ip's subnet and fetches from the host
  at host_ip;
- two NICs, user and tap, each fetching from its own side;
- two NICs with one MAC: one line, kvmtool's status;
- passt killed mid-run: the guest sees its carrier go, lkvm says so
  once and keeps running until the guest ends.

A boot costs a minute or more in the test host, so the user NIC, the
two NICs and the three taps are one guest with four NICs (each tap in a
subnet of its own, as two NICs need), each row a test of its own on
that run's record; the unprivileged run and passt's death boot their
own guests.

Needs the kernel `make guest-kernel` builds (virtio-net and IP autoconfig
built in)."""

import os
import shlex
from dataclasses import dataclass

import pytest

from tests.helpers import KVMDIR, LKVM, TOP
from tests.testhost import Result, kvmconfig_kernel

pytestmark = pytest.mark.e2e

SYSTEM_PYTHON = "/usr/bin/python3"     # with Debian's python3-cffi-backend
TIMEOUT = 400           # as the rootfs test: one boot on a loaded machine
LKVM_TIMEOUT = 300      # lkvm's own bound, well inside TIMEOUT
# The four NICs' boot: one fetch more per tap, each bounded by 120 s.
NICS_TIMEOUT = 760
NICS_LKVM_TIMEOUT = 660
BLOB = 1 << 20          # bytes fetched
GUEST = r"""
echo "guest: addr $(ip -4 -o addr show dev eth0)"
echo "guest: mac $(cat /sys/class/net/eth0/address)"
echo "guest: routes $(ip route | tr '\n' ';')"
echo "guest: pnp $(tr '\n' ';' </proc/net/pnp)"
wget -q -O /tmp/blob "http://192.168.33.1:$PORT/blob" &&
	echo "guest: eth0 fetched $(sha256sum </tmp/blob | cut -d' ' -f1) $(wc -c </tmp/blob)"
rm -f /tmp/blob  # the default rootfs, /tmp with it, outlives the guest
"""
# Binds, says its port, then serves: once the port is read it listens.
# On the loopback for passt's guests; everywhere for a tap's, which
# reach the host at the tap's address.
SERVER = ("import http.server, sys; "
          "s = http.server.ThreadingHTTPServer((sys.argv[1], 0), "
          "http.server.SimpleHTTPRequestHandler); "
          "print(s.server_address[1], flush=True); s.serve_forever()")
# A tap's guest sets its address itself (no DHCP server on a tap), uses
# $PAIRS queue pairs (ETHTOOL_SCHANNELS: one CPU's guest takes one by
# itself) and fetches, bounded so that a stall still leaves the record;
# its lines name its device.
CHANNELS = ("import ctypes, fcntl, socket, struct, sys; "
            "b = ctypes.create_string_buffer(struct.pack('9I', 0x3d, *[0] * 7, "
            "int(sys.argv[2]))); "
            "s = socket.socket(); fcntl.ioctl(s.fileno(), 0x8946, "
            "struct.pack('16sP', sys.argv[1].encode(), ctypes.addressof(b)))")
TAP_GUEST = r"""
ip addr add "$ADDR" dev "$DEV" && ip link set "$DEV" up
[ "$PAIRS" = 1 ] || python3 -c "$CHANNELS" "$DEV" "$PAIRS"
echo "guest: $DEV addr $(ip -4 -o addr show dev "$DEV")"
echo "guest: $DEV queues $(ls /sys/class/net/$DEV/queues | tr '\n' ' ')"
echo "guest: $DEV at $(cut -d' ' -f1 /proc/uptime) s"
timeout 120 wget -q -O /tmp/blob "http://$HOST:$PORT/blob" &&
	echo "guest: $DEV fetched $(sha256sum </tmp/blob | cut -d' ' -f1) $(wc -c </tmp/blob)"
echo "guest: $DEV at $(cut -d' ' -f1 /proc/uptime) s"
echo "guest: $DEV neigh $(ip neigh show dev "$DEV")"
echo "guest: $DEV counters $(grep "$DEV:" /proc/net/dev)"
rm -f /tmp/blob
"""


def host_script(kernel: str, options: tuple[str, ...] = (), guest: str = GUEST,
                bind: str = "127.0.0.1", user: bool = False,
                lkvm_timeout: int = LKVM_TIMEOUT) -> str:
    """Serve a random blob over HTTP, boot the guest with lkvm `options`
    running `guest` (PORT set), say what lkvm ended with.  As `user`,
    lkvm runs as nobody, with a home and a copy of the kernel of its own."""
    # The user runs lkvm.py with the system's Python: the tree's .venv may
    # point into its builder's home (a pyenv under /root here).
    command = [SYSTEM_PYTHON, os.path.join(KVMDIR, "lkvm.py")] if user else [LKVM]
    sandbox = [*command, "sandbox", "-k", "$d/bzImage" if user else kernel, "-m", "256",
               "-c", "1", "-p", "quiet", *options]
    as_user = "setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=$d/home " \
        if user else ""
    lkvm = " ".join(a if a.startswith("$") else shlex.quote(a) for a in sandbox)
    return f"""
d=$(mktemp -d)
head -c {BLOB} /dev/urandom > $d/blob
echo "host: blob $(sha256sum <$d/blob | cut -d' ' -f1) {BLOB}"
mkfifo $d/port
(cd $d && exec /usr/bin/python3 -c {shlex.quote(SERVER)} {bind} >$d/port 2>/dev/null) &
server=$!
read port <$d/port
{f"cp {shlex.quote(kernel)} $d/bzImage; mkdir $d/home; chmod 755 $d; chown nobody $d/home"
 if user else ""}
{"mode=$(stat -c %a /dev/kvm); chmod 666 /dev/kvm" if user else ""}
timeout {lkvm_timeout} {as_user}{lkvm} -- \
	sh -c {shlex.quote("PORT=$0; " + guest)} "$port" 2>&1 </dev/null
echo "host: lkvm $?"
{"chmod $mode /dev/kvm" if user else ""}
kill $server
rm -rf $d
# A guest that died before its own rm leaves its blob in the default
# rootfs, which the other sandbox tests in this host share.
rm -f $HOME/.lkvm/default/tmp/blob
"""


def tap_guest(dev: str, addr: str, host: str, pairs: int = 1) -> str:
    return f"DEV={dev} ADDR={addr} HOST={host} PAIRS={pairs} " \
        f"CHANNELS={shlex.quote(CHANNELS)}; " + TAP_GUEST


@dataclass(frozen=True)
class Tap:
    setting: str        # what -n mode=tap gets besides host_ip
    dev: str            # the guest's name for it
    subnet: str         # host_ip is .1 there, the guest takes .15
    pairs: int          # the queue pairs the guest uses ...
    queues: str         # ... and the queues it then has

    @property
    def host(self) -> str:
        return f"{self.subnet}.1"

    @property
    def addr(self) -> str:
        return f"{self.subnet}.15/24"


# The taps beside the user NIC (eth0), by row: one CPU each, as L1 has two
# and an SMP guest there is too slow to boot within the bound; the guest
# asks for the second pair itself.
TAPS = {
    "tap": Tap("", "eth1", "192.168.34", 1, "rx-0 tx-0"),
    "vhost": Tap(",vhost=1", "eth2", "192.168.35", 1, "rx-0 tx-0"),
    "vhost-mq": Tap(",vhost=1,mq=2", "eth3", "192.168.36", 2, "rx-0 rx-1 tx-0 tx-1"),
}


@pytest.fixture(scope="module")
def four_nics(l2host) -> Result:
    """One guest, as root, with the user NIC and TAPS: what each row checks.
    (Module-wide, so it finds the kernel itself: kvmconfig_bzimage is a
    test's.)"""
    kernel = kvmconfig_kernel()
    if kernel is None:
        pytest.skip("no kernel from make guest-kernel: run it")
    options = ["-n", "mode=user"]
    guest = GUEST
    for tap in TAPS.values():
        options += ["-n", f"mode=tap{tap.setting},host_ip={tap.host}"]
        guest += tap_guest(tap.dev, tap.addr, tap.host, tap.pairs)
    script = host_script(str(kernel), tuple(options), guest, bind="0.0.0.0",
                         lkvm_timeout=NICS_LKVM_TIMEOUT)
    r = l2host.run(["sh", "-c", script], timeout=NICS_TIMEOUT, cwd=TOP)
    print(r.stdout)             # what the guest saw, for the record (pytest -s)
    return r


def line(out: str, prefix: str) -> str:
    """The rest of the first line that starts with `prefix`, or ''."""
    found = [ln[len(prefix):] for ln in out.splitlines() if ln.startswith(prefix)]
    return found[0] if found else ""


def fetched(out: str, dev: str) -> bool:
    """`dev` fetched the host's blob, byte for byte."""
    blob = line(out, "host: blob ")
    return bool(blob) and line(out, f"guest: {dev} fetched ") == blob


def unprivileged_run(kernel: str, l2host) -> Result:
    r = l2host.run(["sh", "-c", host_script(kernel, user=True)], timeout=TIMEOUT, cwd=TOP)
    print(r.stdout)
    return r


@pytest.mark.parametrize("user", [False, True], ids=["root", "unprivileged"])
def test_guest_leases_its_address_and_fetches_from_the_hosts_loopback(request, kvmconfig_bzimage,
                                                                      l2host, user):
    r = unprivileged_run(kvmconfig_bzimage, l2host) if user \
        else request.getfixturevalue("four_nics")
    out = r.stdout
    assert "inet 192.168.33.15/24 " in line(out, "guest: addr "), out + r.stderr
    assert "guest: mac 02:15:15:15:15:15" in out, out
    assert "default via 192.168.33.1 dev eth0" in out, out
    assert "nameserver 192.168.33.1" in out, out
    assert fetched(out, "eth0"), out
    assert "host: lkvm 0" in out, out
    assert "link is down" not in out, out


@pytest.mark.parametrize("row", TAPS)
def test_a_tap_guest_fetches_from_host_ip(four_nics, row):
    tap, out = TAPS[row], four_nics.stdout
    assert f"inet {tap.addr} " in line(out, f"guest: {tap.dev} addr "), \
        f"{row} ({tap.dev}): no address\n{out}{four_nics.stderr}"
    assert f"guest: {tap.dev} queues {tap.queues} " in out, f"{row} ({tap.dev}): queues\n{out}"
    assert fetched(out, tap.dev), f"{row} ({tap.dev}): no fetch from {tap.host}\n{out}"
    assert "host: lkvm 0" in out, out


def test_two_nics_each_fetch_from_their_side(four_nics):
    out, tap = four_nics.stdout, TAPS["tap"]
    assert "inet 192.168.33.15/24 " in line(out, "guest: addr "), out + four_nics.stderr
    assert f"inet {tap.addr} " in line(out, f"guest: {tap.dev} addr "), out
    assert "guest: mac 02:15:15:15:15:15" in out, out
    assert fetched(out, "eth0") and fetched(out, tap.dev), out
    assert "host: lkvm 0" in out, out


def test_two_nics_with_one_mac_are_one_line(kvmconfig_bzimage, l2host):
    mac = "guest_mac=02:00:00:00:00:01"
    r = l2host.run([LKVM, "run", "-k", kvmconfig_bzimage, "-n", f"mode=user,{mac}",
                    "-n", f"mode=tap,{mac}"], timeout=60, cwd=TOP)
    assert r.returncode == 128, r.stderr
    assert r.stderr.splitlines() == ["  Fatal: --network: two NICs have the guest MAC "
                                     "02:00:00:00:00:01"]


# The guest says it is up, the host kills passt (lkvm's one child), the
# guest waits for its carrier to go and ends.
CARRIER_GUEST = r"""
echo "guest: up $(cat /sys/class/net/eth0/carrier)"
i=0
while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ] && [ $i -lt 600 ]; do
	sleep 0.1; i=$((i + 1))
done
echo "guest: carrier $(cat /sys/class/net/eth0/carrier)"
"""


def test_passt_dying_takes_the_guests_link_down_and_lkvm_goes_on(kvmconfig_bzimage, l2host):
    sandbox = [LKVM, "sandbox", "-k", kvmconfig_bzimage, "-m", "256", "-c", "1", "-p", "quiet",
               "--", "sh", "-c", CARRIER_GUEST]
    script = f"""
d=$(mktemp -d)
timeout {LKVM_TIMEOUT} {shlex.join(sandbox)} >$d/out 2>$d/err </dev/null &
lkvm=$!
i=0
until grep -q "guest: up" $d/out || [ $i -ge {LKVM_TIMEOUT} ]; do sleep 1; i=$((i + 1)); done
set -- $(cat /proc/$lkvm/task/*/children)    # timeout's child: lkvm
set -- $(cat /proc/$1/task/$1/children)      # lkvm's: passt
kill -9 "$1"
wait $lkvm
echo "host: lkvm $?"
cat $d/out; echo "host: stderr"; cat $d/err
rm -rf $d
"""
    r = l2host.run(["sh", "-c", script], timeout=TIMEOUT, cwd=TOP)
    out = r.stdout
    print(out)
    assert "guest: up 1" in out and "guest: carrier 0" in out, out + r.stderr
    assert "host: lkvm 0" in out, out
    err = out.split("host: stderr")[1]
    assert err.count("the guest's link is down") == 1 and "passt killed by signal 9" in err, out
