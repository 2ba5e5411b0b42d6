"""What the e2e tests of Debian's arm64 and ppc64 kernels under lkvm share:
lkvm run in the test host, shell scripts run there that boot a guest and
drive it as a user does, and the marks the guest and the scripts print."""

import json
import os
import time

from tests.helpers import KVMDIR

LKVM = os.path.join(KVMDIR, "lkvm.py")
LINUX_TIMEOUT = 300  # about 11 s quiet for a minimal VMM in an idle arm64 host
# Bounds, not expectations, for a script that boots a guest and drives it
# with lkvm's commands (each a Python start, seconds in the emulated host):
# one took 95 s, another 264 s with the machine loaded six times
# over; lkvm's own bound ends a stuck guest well before the script's.
DRIVEN_TIMEOUT = 900
LKVM_TIMEOUT = 720


def lkvm_run(host, *args: str, timeout: float):
    """`lkvm run ARGS` with the host's python3 (the launcher's venv is this
    machine's), and how long it took by the host's clock."""
    start = time.monotonic()
    r = host.run(["python3", LKVM, "run", *args], timeout=timeout, cwd=KVMDIR)
    return r, time.monotonic() - start


def marks_of(stdout: str) -> dict[str, str]:
    """The "MARK name=value" and "HOST name=value" lines the guest and the
    host script print, by "MARK name" and "HOST name"."""
    return dict(line.split("=", 1) for line in stdout.splitlines()
                if line.startswith(("MARK ", "HOST ")) and "=" in line)


def run_script(host, script: str, what: str, timeout: float = 0):
    """A host script booting a guest: its result and its marks; how long
    it took is printed after `what`."""
    start = time.monotonic()
    r = host.run(["sh", "-c", script], timeout=timeout or LINUX_TIMEOUT, cwd=KVMDIR)
    print(f"{what}: {time.monotonic() - start:.1f} s")
    return r, marks_of(r.stdout)


# Run in the host first: a HOME of the script's own, removed when the script
# ends, with any guest it left running, so ~/.lkvm and the files beside it
# are the test's alone (the host may be this very machine).
PRIVATE_HOME = """
box=$(mktemp -d -p "$HOME") || exit 1
export HOME="$box"
lkvm=
trap 'kill $lkvm 2>/dev/null; rm -rf "$box"' EXIT
"""

# rdinit of the sandbox's initramfs: Debian's kernels have virtio and 9p as
# modules, so they cannot mount a 9p root themselves. This init loads them,
# mounts the root lkvm shares as the kernel would (tag /dev/root), and hands
# over to the rootfs's own init, lkvm's guest init, which finds lkvm_sandbox=
# and lkvm_status= in the environment it keeps.
ROOT_INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko; do insmod "/lib/modules/$ko"; done < /etc/modules
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose /dev/root /newroot ||
	echo "MARK no 9p root"
umount /proc /sys /dev
exec switch_root /newroot /virt/init
"""
# The modules ROOT_INIT needs beside the virtio ones every initrd loads.
ROOT_MODULES = ("9p", "9pnet_virtio")
# What the sandbox runs: where it is, on what, and an exit status of its own.
SANDBOX_COMMAND = ('echo "MARK pwd=$(pwd)"; echo "MARK arch=$(uname -m)"; '
                   'echo "MARK hostfs=$(ls /host/bin/busybox)"; exit 7')
SANDBOX_HOST = PRIVATE_HOME + """
python3 {lkvm} setup {name} || exit 1
python3 {lkvm} sandbox -k {kernel} -i {initrd} -d {name} -m 256 -c 1 \
    -p "rdinit=/rootinit quiet" {args} -- sh -c {command} </dev/null
echo "HOST rc=$?"
echo "HOST init=$(od -An -N2 -j18 -tx1 "$HOME/.lkvm/{name}/virt/init" | tr -d ' ')"
"""

# The guest waits for a line on its console, says what it got, and stays up
# until lkvm stop ends it.
IPC_SCRIPT = r"""
echo "MARK ready"
read -r line
echo "MARK got=$line"
exec sleep 600
"""
# Run in the host, before a script that drives a running guest: in a HOME
# of its own, lkvm in the background with the guest's console on two FIFOs, fd 3 typing into it and
# fd 4 reading it; upto TEXT passes the console's lines on until one holds
# TEXT; state WHEN tells what lkvm list says.
BACKGROUND = PRIVATE_HOME + """
cd "$HOME" && mkfifo in out || exit 1
timeout {lkvm_timeout} python3 {lkvm} run -k {kernel} -i {initrd} -m 256 -p quiet {args} \
    <in >out 2>&1 &
lkvm=$!
exec 3>in 4<out
upto() {{
    while read -r line <&4; do
        echo "$line"
        case "$line" in *"$1"*) return 0;; esac
    done
    echo "HOST eof before $1"
    exit 1
}}
state() {{ echo "HOST $1=$(python3 {lkvm} list -i --json | tr -d ' \\n')"; }}
"""
# Each IPC command's status and what lkvm list says after it.
IPC_HOST = """
upto "MARK ready"
state booted
python3 {lkvm} pause -n {name}; echo "HOST pause=$?"
state paused
echo typed-while-paused >&3
python3 {lkvm} resume -n {name}; echo "HOST resume=$?"
state resumed
upto "MARK got="
python3 {lkvm} stop -n {name}; echo "HOST stop=$?"
wait $lkvm; echo "HOST rc=$?"
cat <&4
state stopped
"""


def in_background(kernel, initrd, args: str) -> str:
    """BACKGROUND for `kernel` and `initrd`, `args` added to lkvm run's."""
    return BACKGROUND.format(lkvm=LKVM, kernel=kernel, initrd=initrd, args=args,
                             lkvm_timeout=LKVM_TIMEOUT)


INFLATE_MIB = 64
# The guest on hvc0 (virtio's console on arm64, whose driver is a module, so
# the kernel's console= cannot open it before init; sPAPR's own on ppc64):
# which console the kernel uses, the hardware RNG's source and 16 bytes of
# it, then how far MemTotal drops once the host has inflated the balloon
# (polled, boundedly: the driver inflates in its own time).
DEVICES_SCRIPT = rf"""
exec >/dev/hvc0 2>&1 </dev/hvc0
echo "MARK console=$(cat /sys/class/tty/console/active)"
echo "MARK rng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "MARK random=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
kb() {{ awk '/^MemTotal:/ {{ print $2 }}' /proc/meminfo; }}
t0=$(kb)
echo "MARK ready"
i=0
while [ "$(kb)" -gt $((t0 - {INFLATE_MIB} * 1024)) ] && [ $i -lt 600 ]; do
    i=$((i + 1)); sleep 0.2
done
echo "MARK inflated=$(( (t0 - $(kb)) / 1024 ))"
poweroff -f
"""
DEVICES_HOST = """
upto "MARK ready"
python3 {lkvm} balloon -n {name} -i {mib}; echo "HOST balloon=$?"
upto "MARK inflated="
wait $lkvm; echo "HOST rc=$?"
"""


# What a user sees of SANDBOX_HOST's run, of IPC_HOST's round and of
# DEVICES_HOST's: the same on every arch.  Plain asserts: pytest shows
# each message, `out`.
def check_sandbox(r, marks: dict[str, str], name: str, e_machine: str, machine: str) -> None:
    """lkvm put the arch's init (ELF e_machine) in the rootfs `name`, and
    the command ran on `machine` (uname -m) with its exit status lkvm's."""
    out = r.stdout + r.stderr
    assert f"Your new rootfs named {name} has been created" in r.stdout, out
    assert marks.get("HOST init") == e_machine, out
    assert marks.get("MARK arch") == machine, out
    assert marks.get("MARK pwd") == "/host" + KVMDIR, out
    assert marks.get("MARK hostfs") == "/host/bin/busybox", out
    assert marks.get("HOST rc") == "7", out


def check_ipc(r, marks: dict[str, str], name: str) -> None:
    out = r.stdout + r.stderr

    def states(when: str) -> list[tuple[str, str]]:
        return [(g["name"], g["state"]) for g in json.loads(marks[f"HOST {when}"])]

    assert states("booted") == [(name, "running")], out
    assert marks.get("HOST pause") == "0" and f"Guest {name} paused" in r.stdout, out
    assert states("paused") == [(name, "paused")], out
    assert marks.get("HOST resume") == "0", out
    assert states("resumed") == [(name, "running")], out
    assert marks.get("MARK got") == "typed-while-paused", out
    assert marks.get("HOST stop") == "0", out
    assert marks.get("HOST rc") == "0", out
    assert states("stopped") == [], out


def check_devices(r, marks: dict[str, str]) -> None:
    out = r.stdout + r.stderr
    assert marks.get("MARK console") == "hvc0", out
    assert marks.get("MARK rng", "").startswith("virtio_rng"), out
    assert len(marks.get("MARK random", "")) == 32, out
    assert marks.get("HOST balloon") == "0", out
    assert int(marks.get("MARK inflated", "0")) >= INFLATE_MIB, out
    assert marks.get("HOST rc") == "0", out
