"""arm64 guests under lkvm on arm64 KVM (e2e: in the arm64 test host where
this machine is no arm64 one).  First the tiny Image of tests/guests/arm64,
which checks the device tree in x0, writes to the UART and powers off with
PSCI; timed with the host's clock, as the guest's own disagrees there."""

import json
import os
import shlex
import subprocess
import time

import pytest

from tests.helpers import GUESTS, KVMDIR
from tests.testhost import arm64_guest_kernel, make_initrd

pytestmark = pytest.mark.e2e

LKVM = os.path.join(KVMDIR, "lkvm.py")
TINY_TIMEOUT = 120  # python3 starts in about a second in the emulated host


def lkvm_run(host, *args: str, timeout: float = TINY_TIMEOUT):
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
    """A host script booting an arm64 guest: its result and its marks."""
    start = time.monotonic()
    r = host.run(["sh", "-c", script], timeout=timeout or LINUX_TIMEOUT, cwd=KVMDIR)
    print(f"arm64 {what}: {time.monotonic() - start:.1f} s")
    return r, marks_of(r.stdout)


def test_tiny_arm64_guest(arm64host) -> None:
    hello = os.path.join(GUESTS, "arm64", "hello.bin")
    assert os.path.exists(hello), "run make"
    # Any initrd keeps lkvm from sharing a default 9p root with an Image.
    r, seconds = lkvm_run(arm64host, "-k", hello, "-m", "16", "-c", "1", "-i", hello)
    print(f"arm64 tiny guest: lkvm run to PSCI SYSTEM_OFF in {seconds:.2f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hello from arm64, a device tree in x0" in r.stdout, r.stdout + r.stderr


# What the Linux guest's init prints: the marker, and what lkvm told it.
LINUX_SCRIPT = r"""
echo "MARK booted"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK model=$(cat /proc/device-tree/model)"
poweroff -f
"""
LINUX_TIMEOUT = 300  # about 11 s quiet for a minimal VMM in an idle host
# Bounds, not expectations, for a script that boots a guest and drives it
# with lkvm's commands (each a Python start, seconds in the emulated host):
# one took 95 s, another 264 s with the machine loaded six times
# over; lkvm's own bound ends a stuck guest well before the script's.
DRIVEN_TIMEOUT = 900
LKVM_TIMEOUT = 720


def test_debian_arm64_kernel_two_cpus(arm64host) -> None:
    """Debian's arm64 kernel (the Image the host itself boots) with two
    vCPUs, the second brought up through PSCI, to a marker from init,
    then powered off through PSCI SYSTEM_OFF."""
    initrd = make_initrd(LINUX_SCRIPT, modules=False, arch="arm64")
    r, seconds = lkvm_run(arm64host, "-k", str(arm64_guest_kernel()), "-i", str(initrd),
                          "-m", "256", "-c", "2", "-p", "quiet", timeout=LINUX_TIMEOUT)
    print(f"arm64 Debian kernel, 2 vCPUs: lkvm run to poweroff in {seconds:.1f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    marks = marks_of(r.stdout)
    assert "MARK booted" in r.stdout, out
    assert marks["MARK cpus"].strip() == "2", out
    assert "console=ttyS0" in marks["MARK cmdline"], out
    assert marks["MARK model"].strip("\0\r\n ") == "lkvm", out


BLK_SCRIPT = r"""
echo "MARK booted"
printf lkvm-arm64-blk > /dev/vda && sync
echo "MARK read=$(head -c 14 /dev/vda)"
echo "MARK pci=$(ls /sys/bus/pci/devices | wc -l)"
{end}
"""
# How each boot ends, and the status lkvm then ends with: PSCI SYSTEM_OFF,
# or a panic, which resets the machine (panic=1) after its banner.
ENDS = {"mmio": ("poweroff -f", "0"), "pci": ("echo c > /proc/sysrq-trigger", "1")}
# Run in the host: a disk on its tmpfs, the guest writes it, then what the
# host's file holds and the device tree lkvm wrote, in hex.
BLK_HOST = """
dd if=/dev/zero of="$HOME/disk" bs=1M count=4 2>/dev/null || exit 1
python3 {lkvm} run -k {kernel} -i {initrd} -m 256 -c 2 -p quiet -d "$HOME/disk" \
    --virtio-transport {transport} --dump-dtb "$HOME/dtb" </dev/null
echo "HOST rc=$?"
echo "HOST disk=$(head -c 14 "$HOME/disk")"
echo "HOST dtb=$(od -An -v -tx1 "$HOME/dtb" | tr -d ' \\n')"
"""


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_arm64_virtio_blk(arm64host, transport) -> None:
    """virtio-blk written and read back by the guest on either transport:
    the device found through the device tree (a virtio-mmio node, or the
    ECAM host bridge and its interrupt-map); then a power-off, or a panic
    that lkvm reports with status 1."""
    end, status = ENDS[transport]
    initrd = make_initrd(BLK_SCRIPT.format(end=end), arch="arm64")
    script = BLK_HOST.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd,
                             transport=transport)
    r, marks = run_script(arm64host, script, f"virtio-blk over {transport}")
    out = r.stdout + r.stderr
    assert marks.get("HOST rc") == status, out
    assert marks.get("MARK read") == "lkvm-arm64-blk", out
    assert marks.get("HOST disk") == "lkvm-arm64-blk", out
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts"],
                         input=bytes.fromhex(marks["HOST dtb"]), capture_output=True,
                         check=True, timeout=30).stdout.decode()
    if transport == "mmio":
        assert "virtio_mmio@a000000 {" in dts, dts
    else:
        assert "interrupt-map = <0x800 " in dts, dts   # slot 1's INTA#
        assert int(marks["MARK pci"]) == 2, out        # the host bridge and the disk
        assert "the guest kernel panicked" in r.stderr, out


P9_SCRIPT = r"""
mkdir -p /mnt
mount -t 9p -o trans=virtio,version=9p2000.L lkvm9p /mnt || echo "MARK mount failed"
echo "MARK 9p=$(cat /mnt/from-host)"
echo from-guest > /mnt/from-guest
poweroff -f
"""
P9_HOST = """
mkdir -p "$HOME/share" && echo from-host > "$HOME/share/from-host" || exit 1
python3 {lkvm} run -k {kernel} -i {initrd} -m 256 -c 1 -p quiet --9p "$HOME/share,lkvm9p" \
    </dev/null
echo "HOST rc=$?"
echo "HOST file=$(cat "$HOME/share/from-guest")"
"""


def test_arm64_9p_share(arm64host) -> None:
    """A directory of the host shared over virtio-9p (on virtio-pci), read
    and written by the arm64 guest."""
    initrd = make_initrd(P9_SCRIPT, arch="arm64", extra_modules=("9p", "9pnet_virtio"))
    script = P9_HOST.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd)
    r, marks = run_script(arm64host, script, "9p share")
    out = r.stdout + r.stderr
    assert marks.get("HOST rc") == "0", out
    assert marks.get("MARK 9p") == "from-host", out
    assert marks.get("HOST file") == "from-guest", out


# Run in the host first: a HOME of the script's own, removed when the script
# ends, with any guest it left running, so ~/.lkvm and the files beside it
# are the test's alone (the host may be this arm64 machine).
PRIVATE_HOME = """
box=$(mktemp -d -p "$HOME") || exit 1
export HOME="$box"
lkvm=
trap 'kill $lkvm 2>/dev/null; rm -rf "$box"' EXIT
"""
# rdinit of the sandbox's initramfs: Debian's kernel has virtio and 9p as
# modules, so it cannot mount a 9p root itself. This init loads them, mounts
# the root lkvm shares as the kernel would (tag /dev/root), and hands over to
# the rootfs's own init, lkvm's guest init, which finds lkvm_sandbox= and
# lkvm_status= in the environment it keeps.
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
# What the sandbox runs: where it is, on what, and an exit status of its own.
SANDBOX_COMMAND = ('echo "MARK pwd=$(pwd)"; echo "MARK arch=$(uname -m)"; '
                   'echo "MARK hostfs=$(ls /host/bin/busybox)"; exit 7')
SANDBOX_HOST = PRIVATE_HOME + """
python3 {lkvm} setup arm64box || exit 1
python3 {lkvm} sandbox -k {kernel} -i {initrd} -d arm64box -m 256 -c 1 \
    -p "rdinit=/rootinit quiet" -- sh -c {command} </dev/null
echo "HOST rc=$?"
echo "HOST init=$(od -An -N2 -j18 -tx1 "$HOME/.lkvm/arm64box/virt/init" | tr -d ' ')"
"""
EM_AARCH64 = "b700"  # e_machine of an arm64 ELF, little-endian


def test_arm64_sandbox_on_a_9p_root(arm64host) -> None:
    """`lkvm setup` then `lkvm sandbox` on that rootfs, shared as the 9p
    root: the command runs in the guest, in the caller's directory under
    /host, with the host's programs, and its exit status is lkvm's."""
    initrd = make_initrd("", {"rootinit": ROOT_INIT}, arch="arm64",
                         extra_modules=("9p", "9pnet_virtio"))
    script = SANDBOX_HOST.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd,
                                 command=shlex.quote(SANDBOX_COMMAND))
    r, marks = run_script(arm64host, script, "sandbox on a 9p root", DRIVEN_TIMEOUT)
    out = r.stdout + r.stderr
    assert "Your new rootfs named arm64box has been created" in r.stdout, out
    assert marks.get("HOST init") == EM_AARCH64, out     # lkvm put arm64's init in
    assert marks.get("MARK arch") == "aarch64", out
    assert marks.get("MARK pwd") == "/host" + KVMDIR, out
    assert marks.get("MARK hostfs") == "/host/bin/busybox", out
    assert marks.get("HOST rc") == "7", out


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
python3 {lkvm} pause -n arm64ipc; echo "HOST pause=$?"
state paused
echo typed-while-paused >&3
python3 {lkvm} resume -n arm64ipc; echo "HOST resume=$?"
state resumed
upto "MARK got="
python3 {lkvm} stop -n arm64ipc; echo "HOST stop=$?"
wait $lkvm; echo "HOST rc=$?"
cat <&4
state stopped
"""


def in_background(initrd, args: str) -> str:
    return BACKGROUND.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd, args=args,
                             lkvm_timeout=LKVM_TIMEOUT)


def test_arm64_pause_resume_stop(arm64host) -> None:
    """A running arm64 guest driven through its IPC socket as a user does:
    lkvm list shows it running, pause stops it (list: paused), input typed
    meanwhile reaches it once resume has restarted it, and stop ends lkvm
    with status 0 and takes it off the list."""
    initrd = make_initrd(IPC_SCRIPT, arch="arm64")
    script = in_background(initrd, "-c 2 --name arm64ipc") + IPC_HOST.format(lkvm=LKVM)
    r, marks = run_script(arm64host, script, "pause, resume and stop", DRIVEN_TIMEOUT)
    out = r.stdout + r.stderr

    def states(when: str) -> list[tuple[str, str]]:
        return [(g["name"], g["state"]) for g in json.loads(marks[f"HOST {when}"])]

    assert states("booted") == [("arm64ipc", "running")], out
    assert marks.get("HOST pause") == "0" and "Guest arm64ipc paused" in r.stdout, out
    assert states("paused") == [("arm64ipc", "paused")], out
    assert marks.get("HOST resume") == "0", out
    assert states("resumed") == [("arm64ipc", "running")], out
    assert marks.get("MARK got") == "typed-while-paused", out
    assert marks.get("HOST stop") == "0", out
    assert marks.get("HOST rc") == "0", out
    assert states("stopped") == [], out


INFLATE_MIB = 64
# The guest on virtio's console (its driver is a module, so the kernel's
# console= cannot open it before init): which console the kernel uses, the
# hardware RNG's source and 16 bytes of it, then how far MemTotal drops
# once the host has inflated the balloon (polled, boundedly: the driver
# inflates in its own time).
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
python3 {lkvm} balloon -n arm64dev -i {mib}; echo "HOST balloon=$?"
upto "MARK inflated="
wait $lkvm; echo "HOST rc=$?"
"""


def test_arm64_console_rng_balloon(arm64host) -> None:
    """--console virtio, --rng and --balloon on arm64 as on x86: the guest
    talks to the user on hvc0, reads random bytes from virtio-rng, and
    gives up what `lkvm balloon` inflates."""
    initrd = make_initrd(DEVICES_SCRIPT, arch="arm64")
    script = in_background(initrd, "-c 1 --name arm64dev --console virtio --rng --balloon")
    script += DEVICES_HOST.format(lkvm=LKVM, mib=INFLATE_MIB)
    r, marks = run_script(arm64host, script, "virtio console, rng and balloon",
                          DRIVEN_TIMEOUT)
    out = r.stdout + r.stderr
    assert marks.get("MARK console") == "hvc0", out
    assert marks.get("MARK rng", "").startswith("virtio_rng"), out
    assert len(marks.get("MARK random", "")) == 32, out
    assert marks.get("HOST balloon") == "0", out
    assert int(marks.get("MARK inflated", "0")) >= INFLATE_MIB, out
    assert marks.get("HOST rc") == "0", out
