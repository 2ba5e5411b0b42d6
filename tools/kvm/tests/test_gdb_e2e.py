"""Debian's gdb on a Linux guest: the kernel `make guest-kernel` builds
runs under --gdb, with its vmlinux for symbols.  gdb attaches once init is
up (the guest stops), lists every vCPU as a thread, reads registers and
kernel memory at virtual addresses (linux_banner, through Linux's own page
tables), steps an instruction, and detaches; the guest then reads a line
gdb sends it on its console and runs to its normal end.  Runs in the
nested test host where this KVM can't boot Linux.

Breakpoints are not checked here: that host cannot trap them.  Its TCG
emulation of SVM raises an int3 as a software interrupt, not the #BP
exception KVM intercepts (the guest takes the trap itself and panics),
and it does not load the debug registers KVM gives a guest, so hardware
breakpoints never fire.  tests/test_gdb.py checks breakpoints on tiny
guests."""

import shlex
from pathlib import Path

import pytest

from tests.helpers import LKVM, TOP
from tests.testhost import make_initrd

pytestmark = pytest.mark.e2e

TIMEOUT = 480
LKVM_TIMEOUT = 400  # lkvm's and gdb's own bound, inside TIMEOUT
POLLS = 1500  # of 0.2 s each, for the guest to be up
GUEST = """
echo "guest: ready"
read go
echo "guest: got $go"
"""
# gdb's shell expands $HOME.
GDB = ["info threads", "p/x $cr3", "info registers rip", "x/s (char *)&linux_banner", "stepi",
       "detach", "shell echo go > $HOME/console-in"]


def host_script(kernel: str, vmlinux: Path) -> str:
    run = [LKVM, "run", "-k", kernel, "-i", str(make_initrd(GUEST, modules=False)),
           "-m", "256", "-c", "2", "--gdb", "127.0.0.1:1234",
           "-p", "console=ttyS0 quiet nokaslr"]
    gdb = ["gdb", "-batch", "-nx", str(vmlinux), "-ex", "target remote 127.0.0.1:1234"]
    for command in GDB:
        gdb += ["-ex", command]
    return f"""
export HOME=$(mktemp -d)
out=$HOME/console
mkfifo $HOME/console-in
exec 3<>$HOME/console-in
timeout {LKVM_TIMEOUT} {shlex.join(run)} <$HOME/console-in >$out 2>&1 &
pid=$!
i=0
until grep -q "guest: ready" $out; do
	i=$((i + 1))
	[ $i -gt {POLLS} ] && break
	sleep 0.2
done
timeout {LKVM_TIMEOUT} {shlex.join(gdb)} </dev/null 2>&1 | sed 's/^/gdb: /'
wait $pid
echo "host: lkvm $?"
cat $out
rm -rf $HOME
"""


def test_gdb_attaches_to_a_running_linux_guest(kvmconfig_bzimage, l2host):
    vmlinux = Path(kvmconfig_bzimage).with_name("vmlinux")
    if not vmlinux.exists():
        pytest.skip(f"no {vmlinux}: make guest-kernel keeps it since the gdb stub")
    r = l2host.run(["sh", "-c", host_script(kvmconfig_bzimage, vmlinux)], timeout=TIMEOUT,
                   cwd=TOP)
    out = r.stdout
    assert "Thread 1 (vCPU 0)" in out and "Thread 2 (vCPU 1)" in out, out + r.stderr
    assert '<linux_banner>:\t"Linux version 6.' in out, out
    assert "gdb: rip            0xffffffff8" in out, out
    assert "detached" in out, out
    assert "guest: got go" in out, out
    assert "testhost-l2: exit 0" in out and "host: lkvm 0" in out, out
