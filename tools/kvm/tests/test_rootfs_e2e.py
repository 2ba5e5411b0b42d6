"""lkvm sandbox on the default rootfs, as a user runs it: one Linux boot
(through the nested test host where this KVM can't run Linux) checks
what the rootfs gives a command and what reaches the host.

The guest runs the host's dynamic programs through the rootfs's links
into /host, starts in the host's cwd under /host, creates, renames and
deletes in the rootfs, writes into a --9p share the host reads back,
finds the host's / read-only even after remounting it read-write, and
exits 7, which lkvm sandbox returns.  Needs the kernel `make
guest-kernel` builds (9p and virtio built in)."""

import shlex

import pytest

from tests.helpers import LKVM, TOP

pytestmark = pytest.mark.e2e

TIMEOUT = 400  # took 131 s on a machine loaded 3.5 times over
# lkvm's own bound, well inside TIMEOUT: a guest that stops booting then
# fails with its output shown instead of losing the test host's session.
LKVM_TIMEOUT = 300
GUEST = r"""
echo "guest: pwd $(pwd)"
echo "guest: host has $(ls /host | tr '\n' ' ')"
echo "guest: uid $(id -u) tmp $(stat -c %a /tmp)"
cd /tmp && echo data > made && mv made moved && cat moved && rm moved &&
	[ ! -e made ] && [ ! -e moved ] && echo "guest: tmp create rename delete ok"
echo kept > /tmp/kept
mkdir -p /mnt/out && mount -t 9p -o trans=virtio,version=9p2000.L out /mnt/out &&
	echo "guest: from host $(cat /mnt/out/from-host)" &&
	echo "it's from the guest" > /mnt/out/from-guest
mount -o remount,rw /host
touch /host/tmp/lkvm-escape 2>/dev/null || echo "guest: host / refuses writes"
exit 7
"""


def host_script(kernel: str) -> str:
    sandbox = [LKVM, "sandbox", "-k", kernel, "-m", "256", "-c", "1", "-p", "quiet"]
    return f"""
out=$(mktemp -d)
echo from-the-host > $out/from-host
timeout {LKVM_TIMEOUT} {shlex.join(sandbox)} --9p "$out,out" -- sh -c {shlex.quote(GUEST)} \
	2>&1 </dev/null
echo "host: lkvm $?"
echo "host: from guest $(cat $out/from-guest)"
echo "host: rootfs kept $(cat $HOME/.lkvm/default/tmp/kept)"
echo "host: rootfs tmp $(ls -A $HOME/.lkvm/default/tmp | tr '\\n' ' ')"
[ -e /tmp/lkvm-escape ] && echo "host: ESCAPED"
rm -rf $out
"""


def test_sandbox_runs_a_command_on_the_default_rootfs(kvmconfig_bzimage, l2host):
    r = l2host.run(["sh", "-c", host_script(kvmconfig_bzimage)], timeout=TIMEOUT, cwd=TOP)
    out = r.stdout
    assert f"# lkvm run -k {kvmconfig_bzimage} -m 256 -c 1 --name guest-" in out, out + r.stderr
    assert f"guest: pwd /host{TOP}" in out, out
    host_has = out.split("guest: host has ")[1].split("\n")[0].split()
    assert {"bin", "etc", "usr", "work"} <= set(host_has), out
    assert "guest: uid 0 tmp 1777" in out, out        # dynamic id and stat ran
    assert "\ndata\n" in out and "guest: tmp create rename delete ok" in out, out
    assert "guest: from host from-the-host" in out, out
    assert "guest: host / refuses writes" in out, out
    assert "KVM session ended normally" in out, out
    assert "host: lkvm 7" in out, out
    assert "host: from guest it's from the guest" in out, out
    assert "host: rootfs kept kept" in out, out
    assert "host: rootfs tmp kept \n" in out, out      # the renamed file is gone
    assert "ESCAPED" not in out
