"""arm64 guests under lkvm on arm64 KVM (e2e: in the arm64 test host where
this machine is no arm64 one).  First the tiny Image of tests/guests/arm64,
which checks the device tree in x0, writes to the UART and powers off with
PSCI; timed with the host's clock, as the guest's own disagrees there."""

import os
import shlex
import subprocess

import pytest

from tests.e2e_linux import (
    DEVICES_HOST,
    DEVICES_SCRIPT,
    DRIVEN_TIMEOUT,
    INFLATE_MIB,
    IPC_HOST,
    IPC_SCRIPT,
    LINUX_TIMEOUT,
    LKVM,
    ROOT_INIT,
    ROOT_MODULES,
    SANDBOX_COMMAND,
    SANDBOX_HOST,
    check_devices,
    check_ipc,
    check_sandbox,
    in_background,
    lkvm_run,
    marks_of,
    run_script,
)
from tests.helpers import GUESTS
from tests.testhost import arm64_guest_kernel, make_initrd

pytestmark = pytest.mark.e2e

TINY_TIMEOUT = 120  # python3 starts in about a second in the emulated host


def test_tiny_arm64_guest(arm64host) -> None:
    hello = os.path.join(GUESTS, "arm64", "hello.bin")
    assert os.path.exists(hello), "run make"
    # Any initrd keeps lkvm from sharing a default 9p root with an Image.
    r, seconds = lkvm_run(arm64host, "-k", hello, "-m", "16", "-c", "1", "-i", hello,
                          timeout=TINY_TIMEOUT)
    print(f"arm64 tiny guest: lkvm run to PSCI SYSTEM_OFF in {seconds:.2f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hello from arm64, a device tree in x0" in r.stdout, r.stdout + r.stderr


FLASH_HOST = """
python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\\xff" * 65536)' "$HOME/flash" || exit 1
python3 {lkvm} run -k {guest} -i {guest} -m 16 -c 1 -F "$HOME/flash" </dev/null
echo "HOST rc=$?"
echo "HOST flash=$(od -An -v -tx1 -N 8 "$HOME/flash" | tr -d ' \\n')"
"""


def test_tiny_arm64_guest_programs_the_flash(arm64host) -> None:
    """-F/--flash: the flash guest reads the CFI query (an exit), programs
    a word (a store to the array's read-only slot: an exit too) and reads
    it back through the slot; the file keeps it."""
    guest = os.path.join(GUESTS, "arm64", "flash.bin")
    assert os.path.exists(guest), "run make"
    r, marks = run_script(arm64host, FLASH_HOST.format(lkvm=LKVM, guest=guest),
                          "arm64 flash guest", timeout=TINY_TIMEOUT)
    out = r.stdout + r.stderr
    assert marks.get("HOST rc") == "0", out
    assert "Qok\n" in r.stdout, out
    assert marks.get("HOST flash") == "ffffffff6f6b0a00", out


# What the Linux guest's init prints: the marker, and what lkvm told it.
LINUX_SCRIPT = r"""
echo "MARK booted"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK model=$(cat /proc/device-tree/model)"
poweroff -f
"""


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
    r, marks = run_script(arm64host, script, f"arm64 virtio-blk over {transport}")
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
    initrd = make_initrd(P9_SCRIPT, arch="arm64", extra_modules=ROOT_MODULES)
    script = P9_HOST.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd)
    r, marks = run_script(arm64host, script, "arm64 9p share")
    out = r.stdout + r.stderr
    assert marks.get("HOST rc") == "0", out
    assert marks.get("MARK 9p") == "from-host", out
    assert marks.get("HOST file") == "from-guest", out


EM_AARCH64 = "b700"  # e_machine of an arm64 ELF, little-endian


def test_arm64_sandbox_on_a_9p_root(arm64host) -> None:
    """`lkvm setup` then `lkvm sandbox` on that rootfs, shared as the 9p
    root: the command runs in the guest, in the caller's directory under
    /host, with the host's programs, and its exit status is lkvm's."""
    initrd = make_initrd("", {"rootinit": ROOT_INIT}, arch="arm64",
                         extra_modules=ROOT_MODULES)
    script = SANDBOX_HOST.format(lkvm=LKVM, kernel=arm64_guest_kernel(), initrd=initrd,
                                 name="arm64box", args="",
                                 command=shlex.quote(SANDBOX_COMMAND))
    r, marks = run_script(arm64host, script, "arm64 sandbox on a 9p root", DRIVEN_TIMEOUT)
    check_sandbox(r, marks, "arm64box", EM_AARCH64, "aarch64")


def test_arm64_pause_resume_stop(arm64host) -> None:
    """A running arm64 guest driven through its IPC socket as a user does:
    lkvm list shows it running, pause stops it (list: paused), input typed
    meanwhile reaches it once resume has restarted it, and stop ends lkvm
    with status 0 and takes it off the list."""
    initrd = make_initrd(IPC_SCRIPT, arch="arm64")
    script = in_background(arm64_guest_kernel(), initrd, "-c 2 --name arm64ipc")
    script += IPC_HOST.format(lkvm=LKVM, name="arm64ipc")
    r, marks = run_script(arm64host, script, "arm64 pause, resume and stop", DRIVEN_TIMEOUT)
    check_ipc(r, marks, "arm64ipc")


def test_arm64_console_rng_balloon(arm64host) -> None:
    """--console virtio, --rng and --balloon on arm64 as on x86: the guest
    talks to the user on hvc0, reads random bytes from virtio-rng, and
    gives up what `lkvm balloon` inflates."""
    initrd = make_initrd(DEVICES_SCRIPT, arch="arm64")
    script = in_background(arm64_guest_kernel(), initrd,
                           "-c 1 --name arm64dev --console virtio --rng --balloon")
    script += DEVICES_HOST.format(lkvm=LKVM, name="arm64dev", mib=INFLATE_MIB)
    r, marks = run_script(arm64host, script, "arm64 virtio console, rng and balloon",
                          DRIVEN_TIMEOUT)
    check_devices(r, marks)
