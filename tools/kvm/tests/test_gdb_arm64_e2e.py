"""The gdb stub on arm64 KVM (e2e: in the arm64 test host where this
machine is no arm64 one): Debian's arm64 gdb in batch mode against the
gdb tiny guest, which runs from TTBR1's half with the MMU on, and what a
`g` and a 4 KiB `m` cost there, measured with a client of the protocol."""

import os
import re
import shlex
import subprocess

import pytest

from arm.gdb import Arm64Gdb
from tests.helpers import GUESTS, KVMDIR
from tests.testhost import arm64_guest_kernel, cache, debs, make_initrd
from tests.testhost.l1arm64 import ARCH, ROOT_PACKAGES

pytestmark = pytest.mark.e2e

LKVM = os.path.join(KVMDIR, "lkvm.py")
GUEST = os.path.join(GUESTS, "arm64", "gdb.bin")
ELF = os.path.join(GUESTS, "arm64", "gdb.elf")
HIGH = 0xFFFFFF8080000000  # where gdb.S's labels run: TTBR1's half, RAM's base
PORT = 1234
TIMEOUT = 600  # python3 and gdb start in seconds each in the emulated host
ROUND_TRIPS = 50


def arm64_gdb() -> str:
    """Debian's gdb for arm64 (gdb-minimal: gdb without Python, a few
    libraries) and what it needs beyond the host's root, unpacked into the
    cache (which the host sees at the same path): the command line that
    runs it there."""
    with cache.locked():
        root = {p for p, _ in debs.closure(ROOT_PACKAGES, ARCH)}
        pkgs = [(p, v) for p, v in debs.closure(("gdb-minimal",), ARCH) if p not in root]
        key = cache.digest(*(f"{p}={v}" for p, v in pkgs))
        tree = cache.build(cache.root() / "l1" / f"gdb-{ARCH}-{key}",
                           lambda tmp: debs.install(pkgs, ARCH, tmp))
    libs = ":".join(str(tree / d / "aarch64-linux-gnu") for d in ("usr/lib", "lib"))
    return f"LD_LIBRARY_PATH={libs} {tree}/usr/bin/gdb -batch -nx"


def symbol(name: str) -> int:
    """Where a label of the guest runs (nm for aarch64 is a cross tool here)."""
    out = subprocess.run(["aarch64-linux-gnu-nm", ELF], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return HIGH + int(re.search(rf"^([0-9a-f]+) \w {name}$", out, re.M).group(1), 16)


# lkvm with the stub, its stderr on a pipe read until it listens; then
# CLIENT; then the guest's end.  Each line of lkvm's says "LKVM".
SCRIPT = r"""
cd "$(mktemp -d "$HOME/gdb.XXXXXX")"  # the tests share the host and its $HOME
mkfifo err
python3 {lkvm} run -k {guest} -i {guest} -m 16 -c 1 --gdb 127.0.0.1:{port} --gdb-wait \
    >out 2>err &
lkvm=$!
exec 3<err
while read -r line <&3; do
    echo "LKVM $line"
    case "$line" in *listening*) break;; esac
done
sed 's/^/LKVM /' <&3 &
{client}
wait $lkvm
echo "HOST status=$?"
echo "HOST out=$(cat out)"
"""

# A client of the protocol: to the breakpoint, then the round trips.
TIMING = r"""
import socket, sys, time
sys.path.insert(0, {kvmdir!r})
from kvm.gdb.packet import Event, Reader, frame
s = socket.create_connection(("127.0.0.1", {port}), timeout=120)
reader = Reader()
def ask(p):
    s.sendall(frame(p))
    while True:
        for r in reader.feed(s.recv(65536)):
            if r.event == Event.PACKET:
                return r.payload
ask(b"QStartNoAckMode")
print("HOST z1=" + ask(b"Z1,%x,4" % {bp}).decode())
print("HOST stop=" + ask(b"c").decode())
for what, packet in (("g", b"g"), ("m4k", b"m%x,1000" % {counter})):
    start = time.perf_counter()
    for _ in range({n}):
        reply = ask(packet)
    print("HOST %s_us=%d len=%d" % (what, (time.perf_counter() - start) / {n} * 1e6,
                                     len(reply)))
s.sendall(frame(b"k"))
"""


def run_in_host(host, client: str) -> dict[str, str]:
    script = SCRIPT.format(lkvm=LKVM, guest=GUEST, port=PORT, client=client)
    r = host.run(["sh", "-c", script], timeout=TIMEOUT, cwd=KVMDIR)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def gdb_command() -> str:
    assert os.path.exists(ELF), "run make"
    return arm64_gdb()


def test_gdb_breaks_steps_and_changes_the_arm64_guest(arm64host, gdb_command):
    commands = [f"target remote 127.0.0.1:{PORT}", f"add-symbol-file {ELF} -o {HIGH:#x}",
                "info registers pc", "hbreak bp_here", "continue",
                "info registers pc cpsr x4", "p/x *(long *)&counter",
                "stepi", "p/x $pc", "x/s &message",
                "set {char}&message = 'A'", "set {long}&limit = 3",
                "delete", "continue"]
    gdb = gdb_command + "".join(f" -ex {shlex.quote(c)}" for c in commands) + " 2>&1"
    out = run_in_host(arm64host, gdb)
    bp = symbol("bp_here")
    assert re.search(r"pc +0x80000000 ", out), out  # held at the Image's entry, MMU off
    assert f"Breakpoint 1, {bp:#018x} in bp_here ()" in out, out
    assert re.search(rf"pc +{bp:#x} ", out) and re.search(r"x4 +0x1 ", out), out
    assert "$1 = 0x1" in out and f"$2 = {bp + 4:#x}" in out, out
    assert '<message>:\t"arm64 gdb done\\n"' in out, out
    assert "exited normally" in out, out
    assert "HOST status=0" in out and "HOST out=Arm64 gdb done" in out, out


def test_round_trips_on_arm64(arm64host):
    client = "python3 -c " + shlex.quote(TIMING.format(
        kvmdir=KVMDIR, port=PORT, bp=symbol("bp_here"), counter=symbol("counter"),
        n=ROUND_TRIPS))
    out = run_in_host(arm64host, client)
    assert "HOST z1=OK" in out and re.search(r"HOST stop=T05thread:1;hwbreak", out), out
    g = re.search(r"HOST g_us=(\d+) len=(\d+)", out)
    m = re.search(r"HOST m4k_us=(\d+) len=(\d+)", out)
    assert g and int(g.group(2)) == 2 * sum(Arm64Gdb.sizes), out
    assert m and int(m.group(2)) == 2 * 4096, out
    print(f"arm64 round trips: g {g.group(1)} us, 4 KiB m {m.group(1)} us")


# Debian's arm64 kernel with two vCPUs: its init prints where the sync(2)
# handler is (its System.map is a stub; /proc/kallsyms has the truth),
# then waits for a line on the console.  gdb attaches, puts an hbreak on
# the handler, sends the line itself while it holds the guest (so the
# guest cannot run the command before the breakpoint is in), continues,
# and the guest's `sync` stops on it; gdb detaches and the guest runs on
# to its power-off.
LINUX_SCRIPT = r"""
echo "MARK addr=$(grep ' __arm64_sys_sync$' /proc/kallsyms | cut -d' ' -f1)"
read -r line
sync
echo "MARK synced"
poweroff -f
"""
LINUX_HOST = r"""
cd "$(mktemp -d "$HOME/gdb.XXXXXX")"  # the tests share the host and its $HOME
mkfifo in out err
python3 {lkvm} run -k {image} -i {initrd} -m 256 -c 2 -p "quiet nokaslr" --name gdblinux \
    --gdb 127.0.0.1:{port} <in >out 2>err &
lkvm=$!
exec 4>in 5<out 3<err
while read -r line <&3; do
    echo "LKVM $line"
    case "$line" in *listening*) break;; esac
done
sed 's/^/LKVM /' <&3 &
while read -r line <&5; do
    echo "GUEST $line"
    case "$line" in "MARK addr="*) addr=$(echo "${{line#MARK addr=}}" | tr -d '\r'); break;; esac
done
sed 's/^/GUEST /' <&5 &
{gdb} -ex "target remote 127.0.0.1:{port}" -ex "hbreak *0x$addr" -ex "shell echo go >&4" \
    -ex continue -ex "info threads" -ex "info registers pc" -ex detach 2>&1
wait $lkvm
echo "HOST status=$?"
echo "HOST addr=$addr"
"""
LINUX_TIMEOUT = 900


def test_gdb_stops_debian_arm64_linux_in_a_syscall(arm64host, gdb_command):
    initrd = make_initrd(LINUX_SCRIPT, modules=False, arch="arm64")
    script = LINUX_HOST.format(lkvm=LKVM, image=arm64_guest_kernel(), initrd=initrd,
                               port=PORT, gdb=gdb_command)
    r = arm64host.run(["sh", "-c", script], timeout=LINUX_TIMEOUT, cwd=KVMDIR)
    out = r.stdout
    print(out, r.stderr)
    addr = re.search(r"HOST addr=([0-9a-f]{16})", out)
    assert addr and int(addr.group(1), 16) >> 48 == 0xFFFF, out  # the kernel's, shown to root
    assert re.search(rf"Breakpoint 1, 0x{addr.group(1)} in \?\? \(\)", out), out
    assert re.search(rf"pc +0x{addr.group(1)} ", out), out
    assert sorted(re.findall(r"Thread [\d.]+ \(vCPU (\d)\)", out)) == ["0", "1"], out
    assert "GUEST MARK synced" in out and "HOST status=0" in out, out
