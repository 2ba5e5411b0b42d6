"""ppc64 guests under lkvm on KVM-HV (e2e: in the ppc64 test host where
this machine is no ppc64le one with KVM).  The tiny guest of
tests/guests/ppc64 prints through H_PUT_TERM_CHAR on the hypervisor
console and powers off through RTAS, both hypercalls lkvm answers; then
Debian's ppc64el kernel (the host's own vmlinux) to a marker from init."""

import os
import shlex
import subprocess
import time

import pytest

from tests.e2e_linux import (
    DEVICES_HOST,
    DEVICES_SCRIPT,
    DRIVEN_TIMEOUT,
    INFLATE_MIB,
    IPC_HOST,
    IPC_SCRIPT,
    LKVM,
    ROOT_INIT,
    ROOT_MODULES,
    SANDBOX_COMMAND,
    SANDBOX_HOST,
    check_devices,
    check_ipc,
    check_sandbox,
    in_background,
    run_script,
)
from tests.helpers import GUESTS, KVMDIR
from tests.testhost import make_initrd, ppc64_guest_kernel

pytestmark = pytest.mark.e2e

TINY_TIMEOUT = 120  # python3 starts in a second or two in the emulated host


def test_tiny_ppc64_guest(ppc64host) -> None:
    hello = os.path.join(GUESTS, "ppc64", "hello.bin")
    assert os.path.exists(hello), "run make"
    start = time.monotonic()
    r = ppc64host.run(["python3", LKVM, "run", "-k", hello, "-m", "64", "--console", "hv"],
                      timeout=TINY_TIMEOUT, cwd=KVMDIR)
    print(f"ppc64 tiny guest: lkvm run to RTAS power-off in {time.monotonic() - start:.2f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hello from ppc64\n" in r.stdout, r.stdout + r.stderr
    assert "KVM session ended normally" in r.stdout + r.stderr


# Debian's kernel with two vCPUs, the second started through RTAS
# start-cpu: the marker, what lkvm told it, then virtio-blk written and
# read back; the init's reboot (RTAS system-reboot) ends lkvm.
LINUX_SCRIPT = r"""
echo "MARK booted"
echo "MARK cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "MARK cmdline=$(cat /proc/cmdline)"
echo "MARK model=$(cat /proc/device-tree/model)"
echo "MARK mmu=$(grep ^MMU /proc/cpuinfo)"
printf lkvm-ppc64-blk > /dev/vda && sync
echo "MARK read=$(head -c 14 /dev/vda)"
echo "MARK pci=$(ls /sys/bus/pci/devices)"
echo "MARK irq=$(grep -c virtio /proc/interrupts)"
"""
# Run in the host: a disk on its tmpfs, the guest writes it, then what the
# host's file holds and the device tree lkvm wrote, in hex.
LINUX_HOST = """
dd if=/dev/zero of="$HOME/disk" bs=1M count=4 2>/dev/null || exit 1
python3 {lkvm} run -k {kernel} -i {initrd} -m 512 -c 2 --console hv -p quiet \
    -d "$HOME/disk" --dump-dtb "$HOME/dtb" </dev/null
echo "HOST rc=$?"
echo "HOST disk=$(head -c 14 "$HOME/disk")"
echo "HOST dtb=$(od -An -v -tx1 "$HOME/dtb" | tr -d ' \\n')"
"""


def test_debian_ppc64_kernel_two_cpus_and_virtio_blk(ppc64host) -> None:
    """Debian's ppc64el vmlinux on the radix MMU, the hypervisor console
    and the in-kernel XICS with two vCPUs, to a marker from init; then
    virtio-blk on virtio-pci behind the sPAPR host bridge, written and
    read back: the kernel finds the disk in the bridge's device tree
    node, reaches its configuration space through RTAS and takes its
    INTA# from an XICS source."""
    initrd = make_initrd(LINUX_SCRIPT, arch="ppc64el")
    script = LINUX_HOST.format(lkvm=LKVM, kernel=ppc64_guest_kernel(), initrd=initrd)
    start = time.monotonic()
    r, marks = run_script(ppc64host, script, "ppc64 Debian kernel with virtio-blk")
    print(f"ppc64 Debian kernel, 2 vCPUs: to reboot in {time.monotonic() - start:.1f} s")
    out = r.stdout + r.stderr
    assert marks.get("HOST rc") == "0", out
    assert "MARK booted" in r.stdout, out
    assert marks["MARK cpus"].strip() == "2", out
    assert "console=hvc0" in marks["MARK cmdline"], out
    assert marks["MARK model"].strip("\0\r\n ") == "IBM pSeries (emulated by lkvm)", out
    assert "Radix" in marks["MARK mmu"], out
    assert "testhost-l2: exit 0" in r.stdout, out
    assert marks.get("MARK read") == "lkvm-ppc64-blk", out
    assert marks.get("HOST disk") == "lkvm-ppc64-blk", out
    assert marks.get("MARK pci", "").split() == ["0000:00:01.0"], out   # the disk alone
    assert int(marks.get("MARK irq", "0")) >= 1, out                   # its INTx
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts"],
                         input=bytes.fromhex(marks["HOST dtb"]), capture_output=True,
                         check=True, timeout=30).stdout.decode()
    assert 'compatible = "IBM,Logical_PHB";' in dts, dts


EM_PPC64 = "1500"  # e_machine of a ppc64 ELF, little-endian


def test_ppc64_sandbox_on_a_9p_root(ppc64host) -> None:
    """`lkvm setup` then `lkvm sandbox` on that rootfs, shared over
    virtio-9p (on virtio-pci) as the root: the command runs in the guest,
    in the caller's directory under /host, and its exit status is lkvm's."""
    initrd = make_initrd("", {"rootinit": ROOT_INIT}, arch="ppc64el",
                         extra_modules=ROOT_MODULES)
    script = SANDBOX_HOST.format(lkvm=LKVM, kernel=ppc64_guest_kernel(), initrd=initrd,
                                 name="ppc64box", args="--console hv",
                                 command=shlex.quote(SANDBOX_COMMAND))
    r, marks = run_script(ppc64host, script, "ppc64 sandbox on a 9p root", DRIVEN_TIMEOUT)
    check_sandbox(r, marks, "ppc64box", EM_PPC64, "ppc64le")


def test_ppc64_pause_resume_stop(ppc64host) -> None:
    """A running ppc64 guest driven through its IPC socket: lkvm list shows
    it running, pause stops it (list: paused), a line typed meanwhile
    reaches it through the hypervisor console once resume has restarted
    it, and stop ends lkvm with status 0 and takes it off the list."""
    initrd = make_initrd(IPC_SCRIPT, modules=False, arch="ppc64el")
    script = in_background(ppc64_guest_kernel(), initrd, "-c 2 --console hv --name ppc64ipc")
    script += IPC_HOST.format(lkvm=LKVM, name="ppc64ipc")
    r, marks = run_script(ppc64host, script, "ppc64 pause, resume and stop", DRIVEN_TIMEOUT)
    check_ipc(r, marks, "ppc64ipc")


def test_ppc64_rng_balloon(ppc64host) -> None:
    """--rng and --balloon on virtio-pci: the guest reads random bytes from
    virtio-rng and gives up what `lkvm balloon` inflates, talking on the
    hypervisor console."""
    initrd = make_initrd(DEVICES_SCRIPT, arch="ppc64el")
    script = in_background(ppc64_guest_kernel(), initrd,
                           "-c 1 --console hv --name ppc64dev --rng --balloon")
    script += DEVICES_HOST.format(lkvm=LKVM, name="ppc64dev", mib=INFLATE_MIB)
    r, marks = run_script(ppc64host, script, "ppc64 virtio rng and balloon", DRIVEN_TIMEOUT)
    check_devices(r, marks)
