"""The default user-mode NIC, as a user meets it: one Linux boot (through
the nested test host where this KVM can't run Linux) on the default
rootfs, whose ip=dhcp has the kernel lease 192.168.33.15 from passt; the
guest then fetches a file from an HTTP server on the host's loopback
through 192.168.33.1, and it arrives byte for byte.  The guest also
prints what it sees (address, routes, the lease's DNS), for the record.
Needs the kernel `make guest-kernel` builds (virtio-net and IP autoconfig
built in)."""

import shlex

import pytest

from tests.helpers import LKVM, TOP

pytestmark = pytest.mark.e2e

TIMEOUT = 400           # as the rootfs test: one boot on a loaded machine
LKVM_TIMEOUT = 300      # lkvm's own bound, well inside TIMEOUT
BLOB = 1 << 20          # bytes fetched
GUEST = r"""
echo "guest: addr $(ip -4 -o addr show dev eth0)"
echo "guest: mac $(cat /sys/class/net/eth0/address)"
echo "guest: routes $(ip route | tr '\n' ';')"
echo "guest: pnp $(tr '\n' ';' </proc/net/pnp)"
wget -q -O /tmp/blob "http://192.168.33.1:$PORT/blob" &&
	echo "guest: fetched $(sha256sum </tmp/blob | cut -d' ' -f1) $(wc -c </tmp/blob)"
rm -f /tmp/blob  # the default rootfs, /tmp with it, outlives the guest
"""
# Binds, says its port, then serves: once the port is read it listens.
SERVER = ("import http.server, sys; "
          "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), "
          "http.server.SimpleHTTPRequestHandler); "
          "print(s.server_address[1], flush=True); s.serve_forever()")


def host_script(kernel: str) -> str:
    sandbox = [LKVM, "sandbox", "-k", kernel, "-m", "256", "-c", "1", "-p", "quiet"]
    return f"""
d=$(mktemp -d)
head -c {BLOB} /dev/urandom > $d/blob
echo "host: blob $(sha256sum <$d/blob | cut -d' ' -f1) {BLOB}"
mkfifo $d/port
(cd $d && exec /usr/bin/python3 -c {shlex.quote(SERVER)} >$d/port 2>/dev/null) &
server=$!
read port <$d/port
timeout {LKVM_TIMEOUT} {shlex.join(sandbox)} -- \
	sh -c {shlex.quote("PORT=$0; " + GUEST)} "$port" 2>&1 </dev/null
echo "host: lkvm $?"
kill $server
rm -rf $d
"""


def test_guest_leases_its_address_and_fetches_from_the_hosts_loopback(kvmconfig_bzimage, l2host):
    r = l2host.run(["sh", "-c", host_script(kvmconfig_bzimage)], timeout=TIMEOUT, cwd=TOP)
    out = r.stdout
    print(out)                  # what the guest saw, for the record (pytest -s)
    assert "inet 192.168.33.15/24 " in out.split("guest: addr ")[-1].split("\n")[0], \
        out + r.stderr
    assert "guest: mac 02:15:15:15:15:15" in out, out
    assert "default via 192.168.33.1 dev eth0" in out, out
    assert "nameserver 192.168.33.1" in out, out
    blob = out.split("host: blob ")[1].split("\n")[0]
    assert f"guest: fetched {blob}" in out, out
    assert "host: lkvm 0" in out, out
    assert "link is down" not in out, out
